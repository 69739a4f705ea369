// Persisted queries as the clients send them: Apollo Client 4's PersistedQueryLink (hashed queries by
// GET) and urql's persistedExchange (GET preferred), each asking the same query twice.
// Usage: node persisted.mjs '{"url": "http://127.0.0.1:PORT/graphql", "id": "<dataset id>"}'
// Prints one JSON object: each client's answers and every request it sent (method, whether the
// query text went along, the status and the ETag that came back).
import { createHash } from 'node:crypto';
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client/core';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { Client, fetchExchange } from '@urql/core';
import { persistedExchange } from '@urql/exchange-persisted';
import { report } from './report.mjs';

const { url, id } = JSON.parse(process.argv[2]);
const sha256 = (text) => createHash('sha256').update(text).digest('hex');

// A fetch that records each request: its method, whether it carried the query text, and the answer.
function recording(log) {
  return async (input, init = {}) => {
    const method = (init.method ?? 'GET').toUpperCase();
    const target = String(input);
    const sent = method === 'GET' ? decodeURIComponent(target) : String(init.body ?? '');
    const response = await fetch(input, init);
    // Both queries here contain "dataset(": a request without it sent only the hash.
    log.push({ method, withQuery: sent.includes('dataset('), status: response.status, etag: response.headers.get('etag') });
    return response;
  };
}

const out = { apollo: { requests: [], answers: [] }, urql: { requests: [], answers: [] } };

const count = gql`query Count($id: ID!) { dataset(id: $id) { rowCount } }`;
const apollo = new ApolloClient({
  cache: new InMemoryCache(),
  link: new PersistedQueryLink({ sha256, useGETForHashedQueries: true }).concat(
    new HttpLink({ uri: url, fetch: recording(out.apollo.requests) })),
  defaultOptions: { query: { fetchPolicy: 'no-cache' } },
});
for (let i = 0; i < 2; i++) {
  out.apollo.answers.push((await apollo.query({ query: count, variables: { id } })).data);
}

const urql = new Client({
  url,
  requestPolicy: 'network-only',
  fetch: recording(out.urql.requests),
  exchanges: [persistedExchange({ preferGetForPersistedQueries: true, generateHash: async (query) => sha256(query) }), fetchExchange],
});
const names = gql`query Names($id: ID!) { dataset(id: $id) { name } }`;
for (let i = 0; i < 2; i++) {
  const result = await urql.query(names, { id }).toPromise();
  out.urql.answers.push(result.error ? { error: result.error.message } : result.data);
}
report(out);
