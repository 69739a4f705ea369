// A small graphql-transport-ws client (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md):
// connection_init -> connection_ack, then subscribe / next / error / complete per operation, and
// ping / pong both ways. It reconnects with a growing delay and subscribes again; a refusal for
// want of an API key (close code 4403) asks for the key first.

import { apiKey, askForKey } from "./auth.js";

const PROTOCOL = "graphql-transport-ws";
const FORBIDDEN = 4403;
const KEEPALIVE_MS = 25_000;

export class LiveConnection {
  /** `onStatus(state, text)`: "connecting" | "live" | "offline"; `onResume()`: called after a
   * reconnection, when events may have been missed. */
  constructor({ onStatus, onResume }) {
    this.onStatus = onStatus;
    this.onResume = onResume;
    this.operations = new Map(); // id -> {payload, next, error}
    this.nextId = 1;
    this.socket = null;
    this.acked = false;
    this.wasLive = false;
    this.retries = 0;
    this.timer = null;
    this.keepalive = null;
  }

  get url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/graphql`;
  }

  connect() {
    clearTimeout(this.timer);
    this.onStatus("connecting", "Connecting…");
    const socket = new WebSocket(this.url, PROTOCOL);
    this.socket = socket;
    this.acked = false;
    socket.addEventListener("open", () => {
      const key = apiKey();
      this.send({ type: "connection_init", payload: key ? { apiKey: key } : {} });
    });
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", (event) => this.closed(socket, event));
  }

  /** Close for good (tests and page unload). */
  close() {
    clearTimeout(this.timer);
    clearInterval(this.keepalive);
    const socket = this.socket;
    this.socket = null;
    socket?.close(1000, "bye");
  }

  /** Start a subscription; returns a function that stops it. */
  subscribe(query, variables, { next, error }) {
    const id = String(this.nextId++);
    this.operations.set(id, { payload: { query, variables }, next, error });
    if (this.acked) this.send({ id, type: "subscribe", payload: { query, variables } });
    return () => {
      if (this.operations.delete(id) && this.acked) this.send({ id, type: "complete" });
    };
  }

  /** `subscribe`, but only when the connection is up: its subscribe message is then on the wire
   * when this returns. Answers null otherwise (for work that must be followed from its start). */
  subscribeNow(query, variables, handlers) {
    if (!this.acked || this.socket?.readyState !== WebSocket.OPEN) return null;
    return this.subscribe(query, variables, handlers);
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  /** One message from the server: JSON in a text frame, as graphql-transport-ws has it. */
  receive(frame) {
    let message;
    try {
      message = JSON.parse(frame);
    } catch {
      return;
    }
    const operation = this.operations.get(message.id);
    switch (message.type) {
      case "connection_ack":
        this.acked = true;
        this.retries = 0;
        this.onStatus("live", "Live");
        for (const [id, op] of this.operations) this.send({ id, type: "subscribe", payload: op.payload });
        clearInterval(this.keepalive);
        this.keepalive = setInterval(() => this.send({ type: "ping" }), KEEPALIVE_MS);
        if (this.wasLive) this.onResume();
        this.wasLive = true;
        break;
      case "ping":
        this.send({ type: "pong" });
        break;
      case "next":
        operation?.next(message.payload);
        break;
      case "error":
        this.operations.delete(message.id);
        operation?.error(message.payload);
        break;
      case "complete":
        this.operations.delete(message.id);
        break;
      default: // pong, and anything newer than this client
        break;
    }
  }

  closed(socket, event) {
    if (socket !== this.socket) return; // closed on purpose, or replaced
    clearInterval(this.keepalive);
    this.acked = false;
    if (event.code === FORBIDDEN) {
      this.onStatus("offline", "Needs an API key");
      askForKey("Live updates need an API key.").then(
        () => this.connect(),
        () => this.onStatus("offline", "Not live (no API key)"),
      );
      return;
    }
    const delay = Math.min(30_000, 1000 * 2 ** this.retries);
    this.retries += 1;
    this.onStatus("offline", `Offline; retrying in ${Math.round(delay / 1000)} s`);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
