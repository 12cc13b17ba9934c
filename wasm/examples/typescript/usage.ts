// The TypeScript a front-end team writes against the package: `cargo xtask test` type-checks
// this file with `tsc --strict` against the generated `readyws.d.ts`, so a change that breaks
// these uses fails the build. (The `@ts-expect-error` lines must stay errors.)
import init, {
  ReadyClient,
  type ReadyError,
  type ReadyStats,
  type SessionReset,
  type StateChange,
} from "../../pkg/readyws.js";

interface ChatLine {
  text: string;
}

export async function chat(url: string, fetchToken: () => Promise<string>): Promise<ReadyStats> {
  await init();
  const client = new ReadyClient(url, {
    tokenProvider: fetchToken,
    messageTtlMs: 30_000,
    maxReconnectAttempts: 20,
    connectTimeoutMs: 5_000,
    handshakeTimeoutMs: 5_000,
    startupTimeoutMs: 30_000,
  });
  client.once("reset", (reset: SessionReset) => console.log("first reset", reset.resent));
  const showState = (change: StateChange): void => {
    const attempt: number | undefined = change.attempt;
    console.log(change.state, attempt, change.reason);
  };
  client.on("state", showState);
  client.on("message", (data: ChatLine) => console.log(data.text));
  client.on("error", (error: ReadyError) => console.log(error.kind, error.code, error.message));
  client.on("reset", (reset: SessionReset) => console.log(reset.previousSessionId, reset.resent));

  const { sessionId, resumed } = await client.ready();
  console.log(sessionId.length, resumed === true);

  try {
    await client.send({ text: "hello" } satisfies ChatLine);
    await client.send("a plain string", { ttlMs: 1_000 });
  } catch (caught) {
    const error = caught as ReadyError;
    if (error.kind === "refused" || error.kind === "expired") {
      console.log(error.reason ?? error.message);
    }
  }
  client.off("state", showState);
  const stats = client.stats();
  await client.close();
  return stats;
}

export function misuse(client: ReadyClient): void {
  // @ts-expect-error: there is no such event
  client.on("mesage", () => {});
  // @ts-expect-error: the state callback receives a StateChange, not a number
  client.on("state", (change: number) => change);
  // @ts-expect-error: a once listener of "error" receives a ReadyError, not a string
  client.once("error", (error: string) => error);
  // @ts-expect-error: the reset policy is "resend" or "report"
  new ReadyClient("ws://127.0.0.1/ws", { resetPolicy: "sometimes" });
}

export function withoutOptions(): ReadyClient {
  return new ReadyClient("ws://127.0.0.1:8080/ws");
}
