// The package on Node.js with its global WebSocket, against `readyws serve --echo` behind the
// test harness's proxy: every message sent is acknowledged, and every echo arrives once and in
// order, through a cut of the connection halfway. Run by `cargo xtask test` as
//   node --experimental-websocket client_on_node_keeps_every_message.mjs WS_URL CONTROL_URL
import init, { ReadyClient } from "readyws";

const [wsUrl, controlUrl] = process.argv.slice(2);
const COUNT = 200;
const deadline = setTimeout(() => fail("no verdict within 60 s"), 60_000);

function fail(problem) {
  console.error(`FAILED: ${problem}`);
  process.exit(1);
}

await init();
const client = new ReadyClient(wsUrl, { token: `node-${process.pid}`, backoffInitialMs: 50 });
const received = [];
let allEchoed;
const echoed = new Promise((resolve) => (allEchoed = resolve));
client.on("message", (data) => {
  received.push(data.n);
  if (received.length === COUNT) allEchoed();
});
let states = 0;
client.on("state", () => states++);
const info = await client.ready();
if (typeof info.sessionId !== "string") fail("ready() gave no session id");

const sends = [];
for (let n = 0; n < COUNT; n++) {
  sends.push(client.send({ n }));
  if (n === COUNT / 2) {
    const cut = await fetch(`${controlUrl}/drop`);
    if (!cut.ok) fail(`the proxy did not cut: ${cut.status}`);
  }
}
await Promise.all(sends);
await echoed;
await new Promise((resolve) => setTimeout(resolve, 200)); // any duplicate would arrive by now
for (let n = 0; n < COUNT; n++) {
  if (received[n] !== n) fail(`echo ${n} was ${received[n]} (received ${received.length})`);
}
if (received.length !== COUNT) fail(`${received.length} echoes for ${COUNT} messages`);
const stats = client.stats();
await client.close();
if (client.state() !== "closed") fail(`state after close is ${client.state()}`);
clearTimeout(deadline);
console.log(`ok: ${COUNT} messages acknowledged and echoed once, in order; ${stats.connections} connections, ${states} state changes`);
