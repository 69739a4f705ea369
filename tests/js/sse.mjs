// graphql-sse's own client (distinct connections mode) against /graphql/stream: a subscription to a
// dataset's events that sees an append made over plain HTTP, and a query answered on a stream.
// Usage: node sse.mjs '{"url": "http://127.0.0.1:PORT", "id": "<dataset id>"}'
// Prints one JSON object: the query's answer, the first event, and how many appends it took.
import { createClient } from 'graphql-sse';
import { report } from './report.mjs';

const { url, id } = JSON.parse(process.argv[2]);
const client = createClient({ url: `${url}/graphql/stream`, retryAttempts: 0 });
const out = {};

out.query = await new Promise((resolve, reject) => {
  let answer = null;
  client.subscribe({ query: `query Count($id: ID!) { dataset(id: $id) { rowCount } }`, variables: { id } }, {
    next: (value) => { answer = value; },
    error: reject,
    complete: () => resolve(answer),
  });
});

const events = [];
const stop = client.subscribe(
  { query: `subscription Events($id: ID) { datasetEvents(dataset: $id) { kind dataset version rowCount } }`, variables: { id } },
  { next: (value) => events.push(value), error: (error) => events.push({ error: String(error?.message ?? error) }), complete: () => {} },
);
// The stream opens on its own time: append once a second until the event comes (at most 10 times).
const append = `mutation($rows: JSON!) { appendRows(dataset: "${id}", rows: $rows) { success } }`;
out.appends = 0;
while (events.length === 0 && out.appends < 10) {
  await new Promise((resolve) => setTimeout(resolve, out.appends === 0 ? 300 : 1000));
  if (events.length) break;
  const sent = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query: append, variables: { rows: [{ total_bill: 10, tip: 1 }] } }),
  });
  out.appends += (await sent.json()).data?.appendRows?.success ? 1 : 0;
}
await new Promise((resolve) => setTimeout(resolve, 200));
out.events = events;
stop();
client.dispose();
report(out);
