// On a host without a global WebSocket the constructor throws a ReadyError that names what is
// missing, instead of retrying a connection that can never open. Run by `cargo xtask test` as
//   node --no-experimental-websocket without_websocket_the_constructor_says_why.mjs
import init, { ReadyClient } from "readyws";

await init();
try {
  new ReadyClient("ws://127.0.0.1:9/ws");
  console.log("FAILED: the client was created without a WebSocket");
  process.exit(1);
} catch (error) {
  if (error.name !== "ReadyError" || error.kind !== "invalid" || !/WebSocket/.test(error.message)) {
    console.log(`FAILED: the constructor threw ${error.name} ${error.kind}: ${error.message}`);
    process.exit(1);
  }
  console.log(`ok: ${error.message}`);
}
