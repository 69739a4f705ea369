// The GraphQL documents the page sends, written out in full so that "GraphQL sent" shows exactly
// what a script would send.

const PROBLEM = "error { code message }";

/** A page of the dataset list (oldest first), and how many there are in all for the same search. */
export const DATASETS = `query Datasets($limit: Int, $offset: Int, $search: String) {
  datasets(limit: $limit, offset: $offset, search: $search) { id name version rowCount columns { name dtype } }
  datasetCount(search: $search)
}`;

/** The datasets a join may name: the first page of the largest size the server allows (the picker's
 * own page, and what its search found, are added to these). */
export const JOINABLE = `query Joinable {
  datasets(limit: 1000) { id name columns { name dtype } }
}`;

export const DATASET = `query Dataset($id: ID!) {
  dataset(id: $id) {
    id name version rowCount updatedAt
    columns { name dtype nullCount missingRate }
    preview(limit: 10) { success data ${PROBLEM} meta { columns { name dtype } } }
  }
}`;

export const UPLOAD = `mutation Upload($file: Upload!, $jobId: ID) {
  uploadDataset(file: $file, jobId: $jobId) {
    success
    ${PROBLEM}
    dataset { id name rowCount }
  }
}`;

export const RENAME = `mutation Rename($id: ID!, $name: String!) {
  renameDataset(id: $id, name: $name) { success ${PROBLEM} dataset { id name } }
}`;

export const DELETE = `mutation Delete($id: ID!) {
  deleteDataset(id: $id) { success ${PROBLEM} }
}`;

/** The columns a pipeline gives, without running it (for the menus after a join). */
export const COLUMNS = `query Columns($id: ID!, $steps: [Step!]!) {
  dataset(id: $id) {
    pipeline(steps: $steps) { explain { success data ${PROBLEM} } }
  }
}`;

export const RESULT = `query Result($id: ID!, $steps: [Step!]!, $limit: Int) {
  dataset(id: $id) {
    pipeline(steps: $steps) {
      count { success data ${PROBLEM} }
      rows(limit: $limit) {
        success data ${PROBLEM}
        meta { truncated columns { name dtype } }
      }
    }
  }
}`;

export const DESCRIBE = `query Describe($id: ID!, $steps: [Step!]!) {
  dataset(id: $id) {
    pipeline(steps: $steps) {
      describe { success data ${PROBLEM} }
    }
  }
}`;

export const CHART = `query Chart($id: ID!, $steps: [Step!]!, $spec: ChartInput!) {
  dataset(id: $id) {
    pipeline(steps: $steps) {
      chart(spec: $spec) { success data ${PROBLEM} }
    }
  }
}`;

export const EXPORT = `query Export($id: ID!, $steps: [Step!]!, $format: ExportFormat!) {
  dataset(id: $id) {
    pipeline(steps: $steps) {
      export(format: $format) { success data ${PROBLEM} }
    }
  }
}`;

export const EVENTS = `subscription Events {
  datasetEvents { kind dataset version rowCount }
}`;

/** Where the server is with a job (an upload): stages, then a final event. */
export const JOB_PROGRESS = `subscription JobProgress($job: ID!) {
  jobProgress(job: $job) { job kind stage rowsProcessed bytesProcessed elapsedMs final error }
}`;

/** A dataset's kept versions, newest first, and the columns of its current version (for the key). */
export const VERSIONS = `query Versions($id: ID!) {
  dataset(id: $id) {
    id name version
    columns { name dtype }
    versions(limit: 50) { number createdAt origin rowCount bytes columns { name } }
  }
}`;

/** Version `after` of a dataset against version `before`: {summary, rows, stats}. */
export const DIFF = `query Diff($id: ID!, $before: Int!, $after: Int!, $key: [String!]) {
  dataset(id: $id) {
    at(version: $after) {
      diff(against: {version: $before}, key: $key) {
        success data ${PROBLEM}
        meta { truncated }
      }
    }
  }
}`;

export const RESTORE = `mutation Restore($id: ID!, $version: Int!) {
  restoreVersion(dataset: $id, version: $version) { success ${PROBLEM} dataset { id version rowCount } }
}`;

/** The current result as a recipe: {steps, sources, polars, sql}. */
export const RECIPE = `query Recipe($id: ID!, $steps: [Step!]!) {
  dataset(id: $id) {
    pipeline(steps: $steps) {
      recipe { success data ${PROBLEM} }
    }
  }
}`;
