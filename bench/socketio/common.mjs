// What the Socket.IO peer's server and client share with readyws-bench (bench/src/common.rs):
// the 1 KiB JSON message and the line protocol on standard input and output.
import { createInterface } from "node:readline";

/** The size of every benchmark message's JSON, in bytes (`MESSAGE_BYTES`). */
export const MESSAGE_BYTES = 1024;

const FILLER = "x".repeat(MESSAGE_BYTES);

/** `{"seq":N,"text":"xxx…"}`, exactly MESSAGE_BYTES bytes once serialized, as readyws sends it. */
export function payload(seq) {
  const head = `{"seq":${seq},"text":"`.length;
  const padding = Math.max(0, MESSAGE_BYTES - head - 2);
  return { seq, text: FILLER.slice(0, padding) };
}

/** One line to the parent process. */
export function say(value) {
  process.stdout.write(typeof value === "string" ? `${value}\n` : `${JSON.stringify(value)}\n`);
}

/**
 * Calls `handle` with each line from the parent, one command at a time, in order; `handle` gets
 * a second argument, a function that waits for the parent's next line (a go-ahead). The process
 * ends when standard input does.
 */
export async function obey(handle) {
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const next = async () => {
    const line = await lines.next();
    if (line.done) process.exit(0);
    return line.value;
  };
  for (;;) {
    const line = await next();
    try {
      await handle(line.trim().split(" "), next);
    } catch (error) {
      say({ error: String(error && error.stack ? error.stack : error) });
    }
  }
}
