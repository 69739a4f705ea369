// The API key: asked for in a small form when the server answers UNAUTHENTICATED, kept in
// sessionStorage (this tab only), sent as the X-API-Key header and in the websocket's
// connection_init payload.

import { $ } from "./dom.js";

const STORE = "datagraph.apiKey";
let asking = null;

export function apiKey() {
  return sessionStorage.getItem(STORE) ?? "";
}

/** A refusal the person chose not to answer (they closed the key form). */
export class KeyRefused extends Error {
  constructor(message) {
    super(message);
    this.name = "KeyRefused";
    this.code = "UNAUTHENTICATED";
  }
}

/** Ask for a key (one form at a time, however many requests were refused); resolves once a key is
 * stored, rejects with KeyRefused when the form is cancelled. */
export function askForKey(reason) {
  asking ??= new Promise((resolve, reject) => {
    const dialog = $("#key-dialog");
    const form = $("#key-form");
    const input = $("#key-input");
    const tried = apiKey();
    $("#key-reason").textContent = tried ? `The key you gave was not accepted. ${reason}` : reason;
    input.value = "";
    const finish = (stored) => {
      form.removeEventListener("submit", onSubmit);
      $("#key-cancel").removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      asking = null;
      showKeyButton();
      if (stored) resolve();
      else reject(new KeyRefused(reason));
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(STORE, key);
      finish(true);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(false);
    };
    form.addEventListener("submit", onSubmit);
    $("#key-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

function showKeyButton() {
  const button = $("#key-button");
  button.hidden = false;
  button.textContent = apiKey() ? "Change API key" : "API key";
}

/** The header button opens the form again (to give or change the key). */
export function initKeyButton(onNewKey) {
  if (apiKey()) showKeyButton();
  $("#key-button").addEventListener("click", () => {
    askForKey("Give the API key to use from now on.").then(onNewKey, () => {});
  });
}
