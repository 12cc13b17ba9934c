export * from "./readyws.js";
import type { InitInput, InitOutput } from "./readyws.js";
/** Loads the WebAssembly module; with no argument, from the file beside this one. */
export default function initFromDisk(
  input?: { module_or_path: InitInput | Promise<InitInput> } | InitInput | Promise<InitInput>,
): Promise<InitOutput>;
