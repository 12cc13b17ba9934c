// The package imported by name, as any Vite app would: no path to the .wasm file is passed,
// Vite emits it as an asset and rewrites the URL the package finds it by.
import init, { ReadyClient } from "readyws";

const verdict = document.querySelector("#verdict");
const user = new URLSearchParams(location.search).get("user") ?? "vite-app";

try {
  await init();
  const client = new ReadyClient(`ws://${location.host}/ws`, { token: user });
  const echoed = new Promise((resolve) => client.once("message", resolve));
  await client.send({ text: "hello from vite" });
  const echo = await echoed;
  await client.close();
  verdict.textContent =
    echo.text === "hello from vite" ? "ok: acknowledged and echoed" : `FAILED: echo ${JSON.stringify(echo)}`;
} catch (error) {
  verdict.textContent = `FAILED: ${error?.message ?? error}`;
}
