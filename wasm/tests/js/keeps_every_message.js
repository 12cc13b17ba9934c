// The check the worker and the Node suites share: numbered messages sent to
// `readyws serve --echo`, the connection cut halfway when `cut` is given; every message must be
// acknowledged and every echo arrive once, in order. Resolves with a verdict, "ok: …" or
// "FAILED: …".
const COUNT = 200;

export async function keepsEveryMessage(ReadyClient, url, token, cut) {
  const client = new ReadyClient(url, { token, backoffInitialMs: 50 });
  const received = [];
  let allEchoed;
  const echoed = new Promise((resolve) => (allEchoed = resolve));
  client.on("message", (data) => {
    received.push(data.n);
    if (received.length === COUNT) allEchoed();
  });
  const info = await client.ready();
  if (typeof info.sessionId !== "string") return "FAILED: ready() gave no session id";
  const sends = [];
  for (let n = 0; n < COUNT; n++) {
    sends.push(client.send({ n }));
    if (cut && n === COUNT / 2) {
      const problem = await cut();
      if (problem) return `FAILED: ${problem}`;
    }
  }
  await Promise.all(sends);
  await echoed;
  await new Promise((resolve) => setTimeout(resolve, 200)); // a duplicate would arrive by now
  const connections = client.stats().connections;
  await client.close();
  if (client.state() !== "closed") return `FAILED: the state after close is ${client.state()}`;
  for (let n = 0; n < COUNT; n++) {
    if (received[n] !== n) return `FAILED: echo ${n} was ${received[n]} (${received.length} received)`;
  }
  if (received.length !== COUNT) return `FAILED: ${received.length} echoes for ${COUNT} messages`;
  return `ok: ${COUNT} messages acknowledged and echoed once, in order, over ${connections} connections`;
}

/** A `cut` that asks the test harness's proxy to drop every connection. */
export function cutThrough(controlUrl) {
  return async () => {
    const answer = await fetch(`${controlUrl}/drop`);
    return answer.ok ? null : `the proxy did not cut (${answer.status})`;
  };
}
