// The Socket.IO 4 client of readyws-bench: `node client.mjs` obeys lines on standard input and
// answers each with one JSON line (`{"error": …}` when it failed).
//
// - `ready URL TRIALS`: time from `io()` to the `connect` event, TRIALS times after 20 warm-ups;
//   answers `{"micros":[…]}`.
// - `up URL COUNT` / `down URL COUNT`: connects, answers `{"connected":true}`, waits for the next
//   line (the parent reads the CPU counters meanwhile), then sends COUNT `msg` events with
//   acknowledgement callbacks until every callback ran (`up`), or asks the server for COUNT and
//   acknowledges each as it arrives (`down`); answers `{"rate": messages per second}`.
// - `swarm URL COUNT`: opens COUNT sockets at once; answers `{"ready_ms","failed"}` and keeps
//   them open until standard input ends.
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";
import { obey, payload, say } from "./common.mjs";

const WARM_UP = 20;
/** How long a socket may take to connect before it counts as failed. */
const CONNECT_DEADLINE_MS = 120_000;

const options = {
  // The fastest configuration: straight to WebSocket, no long-polling first.
  transports: ["websocket"],
  forceNew: true,
  reconnection: false,
  timeout: CONNECT_DEADLINE_MS,
};

function connect(url) {
  return new Promise((resolve, reject) => {
    const socket = io(url, options);
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (error) => {
      socket.close();
      reject(error);
    });
  });
}

/**
 * Connects, says so, waits for the go-ahead, then times `move` until it calls `done` and answers
 * with the messages per second.
 */
async function transfer(url, n, goAhead, move) {
  const socket = await connect(url);
  say({ connected: true });
  await goAhead();
  const started = performance.now();
  await new Promise((done) => move(socket, done));
  const rate = n / ((performance.now() - started) / 1000);
  socket.close();
  say({ rate });
}

obey(async ([command, url, count], goAhead) => {
  const n = Number(count);
  switch (command) {
    case "ready": {
      const micros = [];
      for (let trial = 0; trial < n + WARM_UP; trial++) {
        const started = performance.now();
        const socket = await connect(url);
        const elapsed = performance.now() - started;
        socket.close();
        if (trial >= WARM_UP) micros.push(elapsed * 1000);
      }
      say({ micros });
      return;
    }
    case "up":
      return transfer(url, n, goAhead, (socket, done) => {
        let acked = 0;
        for (let seq = 1; seq <= n; seq++) {
          socket.emit("msg", payload(seq), () => {
            acked += 1;
            if (acked === n) done();
          });
        }
      });
    case "down":
      return transfer(url, n, goAhead, (socket, done) => {
        let received = 0;
        socket.on("msg", (_data, ack) => {
          ack();
          received += 1;
          if (received === n) done();
        });
        socket.emit("send", n);
      });
    case "swarm": {
      const started = performance.now();
      const opened = await Promise.allSettled(Array.from({ length: n }, () => connect(url)));
      const ready_ms = performance.now() - started;
      const failed = opened.filter((result) => result.status === "rejected").length;
      say({ ready_ms, failed });
      // Held open until standard input ends.
      return;
    }
    default:
      say({ error: `unknown command ${command}` });
  }
});
