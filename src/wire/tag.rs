//! The protocol's one-byte codes, named: message tags by direction, and the
//! other bytes that mean something on the wire (Describe/Close targets,
//! ErrorResponse fields, ReadyForQuery's transaction status, the answer to
//! SSLRequest).
//!
//! Split by direction because the same byte names different messages: `D`
//! is a Describe from the client and a DataRow from the server, `S` a Sync
//! and a ParameterStatus. The constants are plain `u8`s, so they work in
//! `match` patterns (`tag::fe::PARSE => …`).

/// Tags of the messages a client (frontend) sends.
pub mod fe {
    /// Query: simple-protocol SQL text.
    pub const QUERY: u8 = b'Q';
    /// Parse: name a statement (extended protocol).
    pub const PARSE: u8 = b'P';
    /// Bind: a portal from a statement and parameters.
    pub const BIND: u8 = b'B';
    /// Describe a statement or portal.
    pub const DESCRIBE: u8 = b'D';
    /// Execute a portal.
    pub const EXECUTE: u8 = b'E';
    /// Close a statement or portal.
    pub const CLOSE: u8 = b'C';
    /// Sync: end of an extended-protocol batch.
    pub const SYNC: u8 = b'S';
    /// Flush: ask for the pending output.
    pub const FLUSH: u8 = b'H';
    /// FunctionCall (fast-path).
    pub const FUNCTION_CALL: u8 = b'F';
    /// CopyData during COPY FROM STDIN.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone: the end of COPY FROM STDIN data.
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail: the client aborts COPY FROM STDIN.
    pub const COPY_FAIL: u8 = b'f';
    /// Terminate: the client ends the session.
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse.
    pub const PASSWORD: u8 = b'p';
}

/// Tags of the messages the server (backend) sends.
pub mod be {
    /// Authentication* (Ok, cleartext, MD5, SASL …).
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData: the key a CancelRequest names.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// ParameterStatus: a run-time setting's value.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ReadyForQuery, with the transaction status ([`super::txn`]).
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// ParameterDescription: a statement's parameter types.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// RowDescription: the columns of the rows to come.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// NoData: the statement or portal returns no rows.
    pub const NO_DATA: u8 = b'n';
    /// DataRow: one row.
    pub const DATA_ROW: u8 = b'D';
    /// CommandComplete, with the command tag.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY: u8 = b'I';
    /// PortalSuspended: Execute's row limit was reached.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE: u8 = b'N';
    /// NotificationResponse (LISTEN/NOTIFY).
    pub const NOTIFICATION: u8 = b'A';
    /// CopyInResponse: COPY FROM STDIN starts.
    pub const COPY_IN: u8 = b'G';
    /// CopyOutResponse: COPY TO STDOUT starts.
    pub const COPY_OUT: u8 = b'H';
    /// CopyBothResponse (replication).
    pub const COPY_BOTH: u8 = b'W';
    /// CopyData during COPY TO STDOUT.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone: the end of COPY TO STDOUT data.
    pub const COPY_DONE: u8 = b'c';
    /// FunctionCallResponse (fast-path).
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
}

/// What a Describe or Close names (its first body byte).
pub mod target {
    /// A prepared statement.
    pub const STATEMENT: u8 = b'S';
    /// A portal.
    pub const PORTAL: u8 = b'P';
}

/// Field codes of an ErrorResponse or NoticeResponse body.
pub mod field {
    /// Severity, possibly localized.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized.
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// Primary message.
    pub const MESSAGE: u8 = b'M';
    /// Detail.
    pub const DETAIL: u8 = b'D';
    /// Hint.
    pub const HINT: u8 = b'H';
    /// Cursor position in the statement text.
    pub const POSITION: u8 = b'P';
    /// Cursor position in an internally generated command.
    pub const INTERNAL_POSITION: u8 = b'p';
    /// The internally generated command.
    pub const INTERNAL_QUERY: u8 = b'q';
    /// Context (call stack).
    pub const WHERE: u8 = b'W';
    /// Schema name.
    pub const SCHEMA: u8 = b's';
    /// Table name.
    pub const TABLE: u8 = b't';
    /// Column name.
    pub const COLUMN: u8 = b'c';
    /// Data type name.
    pub const DATA_TYPE: u8 = b'd';
    /// Constraint name.
    pub const CONSTRAINT: u8 = b'n';
    /// Source file.
    pub const FILE: u8 = b'F';
    /// Source line.
    pub const LINE: u8 = b'L';
    /// Source routine.
    pub const ROUTINE: u8 = b'R';
}

/// ReadyForQuery's transaction status byte.
pub mod txn {
    /// Not in a transaction block.
    pub const IDLE: u8 = b'I';
    /// In a transaction block.
    pub const IN_TRANSACTION: u8 = b'T';
    /// In a failed transaction block (statements refused until its end).
    pub const FAILED: u8 = b'E';
}

/// The one-byte answers to SSLRequest and GSSENCRequest.
pub mod negotiate {
    /// SSLRequest accepted: the TLS handshake follows.
    pub const SSL_ACCEPT: u8 = b'S';
    /// GSSENCRequest accepted (pgveil never sends it).
    pub const GSS_ACCEPT: u8 = b'G';
    /// Refused: continue in plain text.
    pub const REFUSE: u8 = b'N';
}
