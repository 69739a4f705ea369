// urql (@urql/core) against a running server: queries over HTTP, subscriptions over graphql-ws.
// Usage: node urql.mjs '{"url": "http://127.0.0.1:PORT/graphql"}'
// Prints one JSON object: each step's data or error, and the pushes the subscriptions saw.
import { Client, fetchExchange, gql, subscriptionExchange } from '@urql/core';
import { createClient as createWsClient } from 'graphql-ws';
import WebSocket from 'ws';
import { report } from './report.mjs';

const { url } = JSON.parse(process.argv[2]);
const ws = createWsClient({ url: url.replace(/^http/, 'ws'), webSocketImpl: WebSocket, retryAttempts: 0 });
const client = new Client({
  url,
  requestPolicy: 'network-only',
  exchanges: [
    fetchExchange,
    subscriptionExchange({
      forwardSubscription(request) {
        const input = { ...request, query: request.query || '' };
        return { subscribe: (sink) => ({ unsubscribe: ws.subscribe(input, sink) }) };
      },
    }),
  ],
});
// Uploads carry a header a browser cannot send cross-site without a preflight (the server's CSRF guard).
const preflight = { fetchOptions: { headers: { 'Apollo-Require-Preflight': 'true' } } };
const outcome = (result) => ({ data: result.data ?? null, error: result.error ? result.error.message : null });

// Resolves with the first push `accept` likes, or rejects after `seconds`.
function nextPush(pushes, accept, seconds) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no push within ${seconds} s`)), seconds * 1000);
    const check = () => {
      const found = pushes.find(accept);
      if (found) {
        clearTimeout(timer);
        resolve(found);
      } else {
        setTimeout(check, 20);
      }
    };
    check();
  });
}

const out = {};
out.sources = outcome(await client.query(gql`query Sources { sources { id } }`, {}).toPromise());
const file = new File(['city,temp\nOslo,3\nLima,19\n'], 'weather.csv', { type: 'text/csv' });
const upload = gql`
  mutation Upload($file: Upload!, $name: String) {
    uploadDataset(file: $file, name: $name) { success error { code message } dataset { id } }
  }`;
out.upload = outcome(await client.mutation(upload, { file, name: 'weather' }, preflight).toPromise());
const id = out.upload.data?.uploadDataset?.dataset?.id;
const count = gql`query Count($id: ID!) { dataset(id: $id) { rowCount } }`;
out.variables = outcome(await client.query(count, { id }).toPromise());

const events = [];
const watched = [];
const eventsSub = client
  .subscription(gql`subscription Events($id: ID) { datasetEvents(dataset: $id) { kind dataset version rowCount } }`, { id })
  .subscribe((result) => events.push(outcome(result)));
const watchSub = client
  .subscription(gql`subscription Watch($id: ID!) { watch(dataset: $id, result: COUNT) { success data } }`, { id })
  .subscribe((result) => watched.push(outcome(result)));
try {
  await nextPush(watched, () => true, 20); // the watch answers at once: both subscriptions are in place
  const append = gql`
    mutation Append($id: ID!, $rows: JSON!) { appendRows(dataset: $id, rows: $rows) { success error { code message } } }`;
  out.append = outcome(await client.mutation(append, { id, rows: [{ city: 'Quito', temp: 14 }] }).toPromise());
  await nextPush(events, (e) => e.data?.datasetEvents?.kind === 'APPENDED', 20);
  await nextPush(watched, (w) => w.data?.watch?.data?.count === 3, 20);
} catch (error) {
  out.waited = String(error.message);
} finally {
  eventsSub.unsubscribe();
  watchSub.unsubscribe();
  await ws.dispose();
}
out.events = events;
out.watched = watched;
report(out);
