// A small graphql-transport-ws client (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md):
// connection_init -> connection_ack, then subscribe / next / error / complete per operation, and
// ping / pong both ways. It reconnects with a growing delay and subscribes again; a refusal for
// want of an API key (close code 4403) asks for the key first.
//
// When the websocket cannot be opened (it closed before its connection_ack twice in a row: a proxy
// that blocks websockets), or with `?live=sse` in the page's address, the same operations go over
// Server-Sent Events instead (graphql-sse's distinct connections mode, at /graphql/stream): one
// streamed `fetch` POST per operation (EventSource can neither POST nor send the key header), read
// as `next` and `complete` events, with the same handlers, reconnection and key prompt.

import { apiKey, askForKey } from "./auth.js";

const PROTOCOL = "graphql-transport-ws";
const FORBIDDEN = 4403;
const KEEPALIVE_MS = 25_000;
const STREAM_PATH = "/graphql/stream";
const FAILED_OPENS_BEFORE_SSE = 2;

/** Whether the page's address asks for Server-Sent Events from the start (`?live=sse`). */
function sseForced() {
  return new URLSearchParams(location.search).get("live") === "sse";
}

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
    this.mode = sseForced() ? "sse" : "ws";
    this.failedOpens = 0; // websockets closed before their connection_ack, in a row
    this.streams = new Map(); // id -> AbortController of its event stream (mode "sse")
    this.generation = 0; // streams of an older generation were given up
    this.streamsLive = false;
  }

  get url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/graphql`;
  }

  connect() {
    clearTimeout(this.timer);
    this.onStatus("connecting", "Connecting…");
    if (this.mode === "sse") {
      this.openStreams();
      return;
    }
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
    this.closeStreams();
  }

  /** Start a subscription; returns a function that stops it. */
  subscribe(query, variables, { next, error }) {
    const id = String(this.nextId++);
    this.operations.set(id, { payload: { query, variables }, next, error });
    if (this.mode === "sse") {
      if (this.streamsLive) this.openStream(id, this.generation);
    } else if (this.acked) this.send({ id, type: "subscribe", payload: { query, variables } });
    return () => {
      if (!this.operations.delete(id)) return;
      if (this.mode === "sse") this.stopStream(id);
      else if (this.acked) this.send({ id, type: "complete" });
    };
  }

  /** `subscribe`, but only when the connection is up: its subscribe message (or its stream's
   * request) is then on its way when this returns. Answers null otherwise (for work that must be
   * followed from its start). */
  subscribeNow(query, variables, handlers) {
    const up = this.mode === "sse" ? this.streamsLive : this.acked && this.socket?.readyState === WebSocket.OPEN;
    if (!up) return null;
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
    const wasAcked = this.acked;
    this.acked = false;
    this.failedOpens = wasAcked || event.code === FORBIDDEN ? 0 : this.failedOpens + 1;
    if (this.failedOpens >= FAILED_OPENS_BEFORE_SSE) {
      this.mode = "sse"; // websockets do not get through: Server-Sent Events over plain HTTP do
      this.socket = null;
      this.connect();
      return;
    }
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

  // Server-Sent Events ---------------------------------------------------------------------------

  /** Open one event stream for each operation (a new generation: older streams are given up). */
  openStreams() {
    this.closeStreams();
    const generation = this.generation;
    for (const id of this.operations.keys()) this.openStream(id, generation);
    if (!this.operations.size) this.streamLive(generation);
  }

  closeStreams() {
    this.generation += 1;
    this.streamsLive = false;
    for (const control of this.streams.values()) control.abort();
    this.streams.clear();
  }

  stopStream(id) {
    this.streams.get(id)?.abort();
    this.streams.delete(id);
  }

  /** POST operation `id` to the stream endpoint and hand its events to the operation's handlers. */
  async openStream(id, generation) {
    const operation = this.operations.get(id);
    if (!operation) return;
    const control = new AbortController();
    this.streams.set(id, control);
    const headers = {
      Accept: "text/event-stream",
      "Content-Type": "application/json",
      "Apollo-Require-Preflight": "true",
    };
    const key = apiKey();
    if (key) headers["X-API-Key"] = key;
    let completed = false;
    try {
      const response = await fetch(STREAM_PATH, {
        method: "POST",
        headers,
        body: JSON.stringify(operation.payload),
        signal: control.signal,
        cache: "no-store",
      });
      if (response.status === 401) {
        this.streamNeedsKey(generation);
        return;
      }
      if (!response.ok || !response.body) {
        if (response.status >= 400 && response.status < 500 && response.status !== 429) {
          // Refused before it started (too long, not allowed): as graphql-transport-ws's `error`.
          const body = await response.json().catch(() => null);
          this.operations.delete(id);
          this.streams.delete(id);
          operation.error(body?.errors ?? [{ message: `The server answered ${response.status}.` }]);
          return;
        }
        throw new Error(`status ${response.status}`);
      }
      this.streamLive(generation);
      completed = await readEvents(response.body, (event, data) => this.streamEvent(id, event, data, generation));
    } catch {
      // the network failed, or the stream was stopped (aborted): told apart below
    }
    if (control.signal.aborted || generation !== this.generation) return;
    this.streams.delete(id);
    if (!completed) this.streamFailed(generation);
  }

  /** One event of operation `id`'s stream; answers true to stop reading it. */
  streamEvent(id, event, data, generation) {
    const operation = this.operations.get(id);
    if (event === "complete") {
      this.operations.delete(id);
      return true;
    }
    if (event !== "next" || !data) return false;
    if (data.errors?.some((e) => e.extensions?.code === "UNAUTHENTICATED")) {
      this.streamNeedsKey(generation); // the key was revoked while the stream was open
      return true;
    }
    if (!("data" in data) && data.errors) {
      // Refused before it ran (the document did not validate): as graphql-transport-ws's `error`.
      this.operations.delete(id);
      operation?.error(data.errors);
      return false; // its `complete` follows
    }
    operation?.next(data);
    return false;
  }

  streamLive(generation) {
    if (generation !== this.generation || this.streamsLive) return;
    this.streamsLive = true;
    this.retries = 0;
    this.onStatus("live", "Live (event stream)");
    if (this.wasLive) this.onResume();
    this.wasLive = true;
  }

  /** A stream broke (the server went away): give up this generation and open them all again later. */
  streamFailed(generation) {
    if (generation !== this.generation) return;
    this.closeStreams();
    const delay = Math.min(30_000, 1000 * 2 ** this.retries);
    this.retries += 1;
    this.onStatus("offline", `Offline; retrying in ${Math.round(delay / 1000)} s`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  streamNeedsKey(generation) {
    if (generation !== this.generation) return;
    this.closeStreams();
    this.onStatus("offline", "Needs an API key");
    askForKey("Live updates need an API key.").then(
      () => this.connect(),
      () => this.onStatus("offline", "Not live (no API key)"),
    );
  }
}

/** Read a text/event-stream body, calling `onEvent(event, data)` for each event (`data` parsed as
 * JSON, or null) until it answers true; answers whether a `complete` event was read. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value.replaceAll("\r\n", "\n");
      let end = buffer.indexOf("\n\n");
      while (end >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        end = buffer.indexOf("\n\n");
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // a comment: the server's keep-alive
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
        }
        if (event === "message" && !data.length) continue;
        let parsed = null;
        try {
          parsed = data.join("") ? JSON.parse(data.join("\n")) : null;
        } catch {
          continue;
        }
        if (onEvent(event, parsed)) return event === "complete";
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
