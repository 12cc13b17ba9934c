// A dedicated module worker that owns the readyws connection and reports to the page. With a
// `control` URL (the test harness's proxy) it runs the shared check through a cut of the
// connection.
import init, { ReadyClient } from "../../pkg/readyws.js";
import { cutThrough, keepsEveryMessage } from "../../tests/js/keeps_every_message.js";

self.onmessage = async ({ data: { url, user, control } }) => {
  try {
    await init();
    const cut = control ? cutThrough(control) : null;
    postMessage({ verdict: await keepsEveryMessage(ReadyClient, url, user, cut) });
  } catch (error) {
    postMessage({ verdict: `FAILED: ${error?.message ?? error}` });
  }
};
