// Package paramsync carries a client's session parameters across the server
// connections of a transaction-mode pool, and recognises what such a pool
// cannot carry.
//
// A pooled client sees one session, but its transactions run on whichever
// server connection is free. Only parameters the server reports (GUC_REPORT:
// it sends ParameterStatus whenever their value changes) can be followed
// without parsing SQL, so only those are carried:
//
//   - Client records what the client asked for in its startup packet and every
//     ParameterStatus the client was sent.
//   - Client.Plan compares it with a server connection's reported values and
//     returns the statements that make the server match (set_config with
//     the exact string, so search_path lists, quotes, backslashes and
//     Unicode come back byte-identical), and nothing when it already matches.
//   - Client.Reconcile returns the ParameterStatus messages the client must
//     be sent when a server reports something the client has not seen
//     (server_version after a failover, normalised startup values).
//   - Watch follows one server connection's messages and, when a command tag
//     calls for it, says a state query (Watch.Query: only the parts that tag
//     needs) is due at the next idle ReadyForQuery; Inspect turns its answer
//     into Hazards: LISTEN, cursors WITH HOLD, SQL PREPARE, SET of
//     unreported parameters, SET ROLE / SESSION AUTHORIZATION, temporary
//     tables, and (only when checking every transaction) session advisory
//     locks. A Hazard renders as the ErrorResponse (FATAL, SQLSTATE 0A000)
//     the client gets and as a *failure.Error; Hazard.Delivery says when:
//     after the transaction's ReadyForQuery (it committed, so its result
//     must not turn into an error), then the pool ends the client session
//     and closes that server connection, which undoes the state.
//
// Trust rule. All client identities the pool maps to one pooled (database,
// role) share server connections, so they must trust each other as much as
// sessions of that role on one direct connection would: whatever one can do
// to a session, the next may meet. The Watch catches the known channels of
// planted state and closes the server connection that carries it, and the
// pool resets a server connection (DISCARD ALL) when it passes to another
// identity; neither is a sandbox (sequence values, caches of a LOADed library,
// plans, a role's own objects in ordinary schemas all outlive a client).
// Clients that must not trust each other need different roles, hence
// different pool keys and server connections.
//
// The package does no I/O of its own except Check and Watch.Check,
// conveniences that run the query on a pgconn.PgConn.
package paramsync
