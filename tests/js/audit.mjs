// graphql-http's GraphQL-over-HTTP audit suite against a running server.
// Usage: node audit.mjs '{"url": "http://127.0.0.1:PORT/graphql"}'
// Prints one JSON array: {id, name, status, reason} per audit.
import { auditServer } from 'graphql-http';
import { report } from './report.mjs';

const { url } = JSON.parse(process.argv[2]);
const results = await auditServer({ url });
const audits = results.map((r) => ({
  id: r.id,
  name: r.name,
  status: r.status,
  reason: r.status === 'ok' ? null : r.reason,
}));
report(audits);
