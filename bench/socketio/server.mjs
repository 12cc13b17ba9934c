// The Socket.IO 4 server of readyws-bench: `node server.mjs` prints `listening 127.0.0.1:PORT`,
// then serves until its standard input ends.
//
// - a `msg` event is acknowledged through its callback, as soon as it is parsed;
// - a `send` event with a count makes the server emit that many `msg` events to its sender, each
//   with an acknowledgement callback, the way readyws's server publishes to one user.
import { createServer } from "node:http";
import { Server } from "socket.io";
import { obey, payload, say } from "./common.mjs";

const http = createServer();
const io = new Server(http, {
  // The WebSocket transport only, as the clients use: no HTTP long-polling fallback to keep.
  transports: ["websocket"],
  // readyws accepts frames up to 1 MiB; Socket.IO's default is also 1 MB.
  maxHttpBufferSize: 1e6,
});

io.on("connection", (socket) => {
  socket.on("msg", (_data, ack) => ack());
  socket.on("send", (count, done) => {
    let acked = 0;
    for (let seq = 1; seq <= count; seq++) {
      socket.emit("msg", payload(seq), () => {
        acked += 1;
        if (acked === count && done) done();
      });
    }
  });
});

http.listen(0, "127.0.0.1", () => {
  say(`listening 127.0.0.1:${http.address().port}`);
});
obey(() => {});
