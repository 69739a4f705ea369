// Talking to /graphql: JSON POSTs, and uploads as GraphQL multipart requests over XMLHttpRequest
// (for upload progress). Every request carries Apollo-Require-Preflight (the server's CSRF guard
// for multipart) and the API key when there is one; a refusal for want of a key (HTTP 401, with an
// UNAUTHENTICATED error) asks for a key and sends the request again.

import { apiKey, askForKey } from "./auth.js";
import { UPLOAD } from "./queries.js";

/** A failure to show the person: a GraphQL error, a Problem from a Result, or no answer at all. */
export class ApiError extends Error {
  constructor(message, code = "INTERNAL", path = null) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.path = path;
  }
}

function headers(extra) {
  const all = { "Apollo-Require-Preflight": "true", Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) all["X-API-Key"] = key;
  return all;
}

/** The body as JSON, or an ApiError saying what came back instead. */
function parse(status, text) {
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(`The server answered ${status} without a readable body.`, status === 0 ? "NETWORK" : "INTERNAL");
  }
}

/** The answer's GraphQL errors as an ApiError (with the first one's code and path), or null. */
function failureOf(body) {
  const errors = body?.errors ?? [];
  if (!errors.length) return null;
  const first = errors[0];
  const message = errors.map((e) => e.message).join(" ");
  return new ApiError(message, first.extensions?.code ?? "GRAPHQL", first.path ?? null);
}

/** Send `send()` again after the person gives a key, for as long as the server refuses it. */
async function withKey(send) {
  for (;;) {
    const body = await send();
    const failure = failureOf(body);
    if (failure?.code === "UNAUTHENTICATED") {
      await askForKey(failure.message);
      continue;
    }
    if (failure) throw failure;
    if (!body?.data) throw new ApiError("The server's answer held no data.", "INTERNAL");
    return body.data;
  }
}

/** POST a query; resolve with its `data`, or throw an ApiError. */
export function graphql(query, variables = {}) {
  return withKey(async () => {
    let response;
    try {
      response = await fetch("/graphql", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ query, variables }),
      });
    } catch {
      throw new ApiError("The server did not answer. Is it still running?", "NETWORK");
    }
    return parse(response.status, await response.text());
  });
}

/** A Result's data, or an ApiError carrying its Problem. */
export function unwrap(result) {
  if (!result) throw new ApiError("The answer was empty.", "INTERNAL");
  if (!result.success) throw new ApiError(result.error?.message ?? "The request failed.", result.error?.code);
  return result.data;
}

/** Upload a file as a new dataset, as job `jobId` (null: the server picks one). `onProgress(fraction)`
 * follows the bytes sent; `onSent()` is called once they are all sent and the server is reading the
 * file. Aborting `signal` stops the request (an ApiError with code CANCELLED). Resolves with the
 * uploadDataset payload; a failed upload (a Problem) is thrown as an ApiError. */
export async function upload(file, { jobId = null, signal, onProgress, onSent }) {
  const data = await withKey(
    () =>
      new Promise((resolve, reject) => {
        const form = new FormData();
        form.append("operations", JSON.stringify({ query: UPLOAD, variables: { file: null, jobId } }));
        form.append("map", JSON.stringify({ 0: ["variables.file"] }));
        form.append("0", file, file.name);
        const xhr = new XMLHttpRequest();
        xhr.open("POST", "/graphql");
        for (const [name, value] of Object.entries(headers({}))) xhr.setRequestHeader(name, value);
        xhr.upload.addEventListener("progress", (event) => {
          if (event.lengthComputable) onProgress(event.loaded / event.total);
        });
        xhr.upload.addEventListener("load", () => onSent());
        xhr.addEventListener("load", () => {
          try {
            resolve(parse(xhr.status, xhr.responseText));
          } catch (error) {
            reject(error);
          }
        });
        xhr.addEventListener("error", () =>
          reject(new ApiError("The upload did not reach the server. Is it still running?", "NETWORK")),
        );
        xhr.addEventListener("abort", () => reject(new ApiError("The upload was cancelled.", "CANCELLED")));
        signal?.addEventListener("abort", () => xhr.abort());
        xhr.send(form);
      }),
  );
  const payload = data.uploadDataset;
  if (!payload.success) throw new ApiError(payload.error?.message ?? "The upload failed.", payload.error?.code);
  return payload;
}

/** The curl command that sends the same upload, for "GraphQL sent". */
export function uploadCommand(fileName) {
  const operations = JSON.stringify({ query: UPLOAD.replace(/\s+/g, " "), variables: { file: null } });
  return [
    `curl ${location.origin}/graphql \\`,
    "  -H 'Apollo-Require-Preflight: true' \\",
    `  -F operations='${operations}' \\`,
    `  -F map='{"0": ["variables.file"]}' \\`,
    `  -F 0=@${JSON.stringify(fileName)}`,
  ].join("\n");
}
