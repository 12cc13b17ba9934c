// The package's entry on Node.js (the "node" condition of its exports map). wasm-bindgen's
// loader fetches the module from a URL next to the glue, and Node's `fetch` does not read
// `file:` URLs, so here `init()` reads the bytes from disk instead. Everything else is the
// browser entry itself.
import { readFile } from "node:fs/promises";
import init from "./readyws.js";

export * from "./readyws.js";

/** Loads the WebAssembly module; with no argument, from the file beside this one. */
export default async function initFromDisk(input) {
  if (input !== undefined) {
    return init(input);
  }
  const bytes = await readFile(new URL("./readyws_bg.wasm", import.meta.url));
  return init({ module_or_path: bytes });
}
