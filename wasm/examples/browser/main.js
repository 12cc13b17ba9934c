// A chat page on the readyws browser client. Served by `readyws serve --static wasm --echo`, it
// connects to the same host's /ws endpoint; the user id is the `?user=` query parameter.
import init, { ReadyClient } from "../../pkg/readyws.js";

await init();

const user = new URLSearchParams(location.search).get("user") ?? `guest-${crypto.randomUUID()}`;
const scheme = location.protocol === "https:" ? "wss" : "ws";
// With `--insecure-dev-auth` the token is the user id; a real server checks a signed token.
const client = new ReadyClient(`${scheme}://${location.host}/ws`, { token: user });

const state = document.querySelector("#state");
const held = document.querySelector("#held");
const log = document.querySelector("#log");
const form = document.querySelector("#form");
const input = document.querySelector("#text");

function showHeld() {
  held.textContent = String(client.stats().pending);
}

function line(text, className) {
  const item = document.createElement("li");
  item.className = className;
  item.textContent = text;
  log.append(item);
  return item;
}

client.on("state", (change) => {
  state.textContent = change.state;
  state.className = change.state;
});
client.on("message", (data) => line(String(data.text), "received"));
client.on("reset", (reset) => line(`the server lost session ${reset.previousSessionId}; ${reset.resent} messages sent again`, "note"));
client.on("error", (error) => line(`${error.kind}: ${error.message}`, "note"));

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value;
  input.value = "";
  const item = line(text, "sent");
  client.send({ text }).then(
    () => item.classList.add("acked"),
    (error) => {
      item.classList.add("failed");
      item.title = `${error.kind}: ${error.message}`;
    },
  ).finally(showHeld);
  showHeld();
});
