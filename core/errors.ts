/**
 * Errors a user can cause. Each carries a stable `code` (for the UI and the
 * API contract) and a message that says what happened and what to do.
 */
export class LetheError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A graph was built with inputs an op cannot take (shape, dtype, attribute). */
export class GraphBuildError extends LetheError {
  constructor(message: string) {
    super('graph-build', message);
  }
}

/** A file is missing, truncated, corrupt, or not what it claims to be. */
export class FileFormatError extends LetheError {
  constructor(
    readonly path: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('file-format', message, options);
  }
}

/** A loss or gradient became NaN or infinite during training. */
export class NonFiniteError extends LetheError {
  constructor(
    readonly step: number,
    readonly which: string[],
    message: string,
  ) {
    super('non-finite', message);
  }
}

/** The requested execution provider or runtime setting is not available. */
export class RuntimeSetupError extends LetheError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('runtime-setup', message, options);
  }
}
