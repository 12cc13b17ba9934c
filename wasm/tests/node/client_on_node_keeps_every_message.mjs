// The package on Node.js with its global WebSocket, imported by name, against
// `readyws serve --echo` behind the test harness's proxy: the shared check, through a cut of
// the connection halfway. Run by `cargo xtask test` as
//   node --experimental-websocket client_on_node_keeps_every_message.mjs WS_URL CONTROL_URL
import init, { ReadyClient } from "readyws";
import { cutThrough, keepsEveryMessage } from "./keeps_every_message.js";

const [wsUrl, controlUrl] = process.argv.slice(2);
const deadline = setTimeout(() => {
  console.error("FAILED: no verdict within 60 s");
  process.exit(1);
}, 60_000);

await init();
const verdict = await keepsEveryMessage(ReadyClient, wsUrl, `node-${process.pid}`, cutThrough(controlUrl));
clearTimeout(deadline);
console.log(verdict);
process.exit(verdict.startsWith("ok") ? 0 : 1);
