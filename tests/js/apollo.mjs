// Apollo Client 4 (in Node, no React) against a running server: what a front end built on it sees.
// Usage: node apollo.mjs '{"url": "http://127.0.0.1:PORT/graphql", "scenario": "journey" | "refusals" | "rate-limit"}'
// Prints one JSON object: each step's outcome, and the status and content type of every answer.
import { ApolloClient, CombinedGraphQLErrors, HttpLink, InMemoryCache, ServerError, gql } from '@apollo/client/core';
import UploadHttpLink from 'apollo-upload-client/UploadHttpLink.mjs';
import { report } from './report.mjs';

const { url, scenario, bigKb = 0 } = JSON.parse(process.argv[2]);
const answers = [];
// The fetch Apollo uses, recording what each answer was (status, media type) for the test to check.
const recordingFetch = async (input, init) => {
  const response = await fetch(input, init);
  answers.push({ status: response.status, contentType: response.headers.get('content-type') });
  return response;
};
const client = (link) => new ApolloClient({ cache: new InMemoryCache(), link, defaultOptions: { query: { fetchPolicy: 'no-cache' } } });
const apollo = client(new HttpLink({ uri: url, fetch: recordingFetch }));
// Uploads need a header a browser cannot send cross-site without a preflight (the server's CSRF guard).
const uploads = client(new UploadHttpLink({ uri: url, fetch: recordingFetch, headers: { 'Apollo-Require-Preflight': 'true' } }));

// What a failed operation looks like to the application: the error's class and its GraphQL errors.
function failure(error) {
  if (CombinedGraphQLErrors.is(error)) {
    return { kind: 'CombinedGraphQLErrors', errors: error.errors.map((e) => ({ message: e.message, code: e.extensions?.code ?? null })) };
  }
  if (ServerError.is(error)) {
    return { kind: 'ServerError', status: error.statusCode, body: error.bodyText };
  }
  return { kind: error?.constructor?.name ?? typeof error, message: String(error?.message ?? error) };
}

async function attempt(run) {
  try {
    return { ok: true, value: await run() };
  } catch (error) {
    return { ok: false, error: failure(error) };
  }
}

const out = { scenario };
if (scenario === 'journey') {
  out.sources = await attempt(async () => (await apollo.query({ query: gql`query Sources { sources { id } }` })).data);
  const upload = gql`
    mutation Upload($file: Upload!, $name: String) {
      uploadDataset(file: $file, name: $name) { success error { code message } dataset { id name rowCount } }
    }`;
  const file = new File(['city,temp\nOslo,3\nLima,19\nCairo,28\n'], 'cities.csv', { type: 'text/csv' });
  out.upload = await attempt(async () => (await uploads.mutate({ mutation: upload, variables: { file, name: 'cities' } })).data);
  const id = out.upload.value?.uploadDataset?.dataset?.id;
  const rows = gql`
    query Rows($id: ID!, $limit: Int) {
      dataset(id: $id) { id name rowCount rows(limit: $limit) { success data } }
    }`;
  out.variables = await attempt(async () => (await apollo.query({ query: rows, variables: { id, limit: 2 } })).data);
} else if (scenario === 'refusals') {
  out.invalid = await attempt(() => apollo.query({ query: gql`query Invalid { noSuchField }` }));
  // A body over max_request_kb: one long string variable (used: Apollo sends only the variables used).
  const padded = gql`query Padded($pad: String) { datasets(search: $pad) { id } }`;
  out.tooLarge = await attempt(() => apollo.query({ query: padded, variables: { pad: 'x'.repeat(bigKb * 1024) } }));
} else if (scenario === 'rate-limit') {
  const query = gql`query Sources { sources { id } }`;
  out.tries = [];
  for (let i = 0; i < 20; i++) {
    const result = await attempt(async () => (await apollo.query({ query })).data);
    out.tries.push(result);
    if (!result.ok) break;
  }
}
out.answers = answers;
report(out);
