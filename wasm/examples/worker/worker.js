// A dedicated module worker that owns the readyws connection: it sends numbered messages to
// `readyws serve --echo`, optionally has the connection cut halfway, and reports to the page
// whether every message was acknowledged and echoed once, in order.
import init, { ReadyClient } from "../../pkg/readyws.js";

const COUNT = 200;

self.onmessage = async ({ data: { url, user, control } }) => {
  try {
    postMessage({ verdict: await run(url, user, control) });
  } catch (error) {
    postMessage({ verdict: `FAILED: ${error?.message ?? error}` });
  }
};

async function run(url, user, control) {
  await init();
  const client = new ReadyClient(url, { token: user, backoffInitialMs: 50 });
  client.on("state", (change) => postMessage({ line: `state: ${change.state}` }));
  const received = [];
  let allEchoed;
  const echoed = new Promise((resolve) => (allEchoed = resolve));
  client.on("message", (data) => {
    received.push(data.n);
    if (received.length === COUNT) allEchoed();
  });
  await client.ready();
  const sends = [];
  for (let n = 0; n < COUNT; n++) {
    sends.push(client.send({ n }));
    if (control && n === COUNT / 2) {
      const cut = await fetch(`${control}/drop`);
      if (!cut.ok) return `FAILED: the proxy did not cut (${cut.status})`;
      postMessage({ line: await cut.text() });
    }
  }
  await Promise.all(sends);
  await echoed;
  await new Promise((resolve) => setTimeout(resolve, 200)); // a duplicate would arrive by now
  const connections = client.stats().connections;
  await client.close();
  for (let n = 0; n < COUNT; n++) {
    if (received[n] !== n) return `FAILED: echo ${n} was ${received[n]}`;
  }
  if (received.length !== COUNT) return `FAILED: ${received.length} echoes for ${COUNT} messages`;
  return `ok: ${COUNT} messages acknowledged and echoed once, in order, over ${connections} connections`;
}
