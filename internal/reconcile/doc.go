// Package reconcile is the reconciler's domain, and everything that crosses
// the boundary between its workflows and its activities: the box, the
// plugin and its manifest, the probe and its verdict, the restart facts and
// the restart protocol, every activity's name, input and result, and the
// codes (error types, actions, outcomes) that callers and operators see.
// It holds the two decisions: DecidePlugin (deliver or record) and
// DecideRestart (restart, clear or nothing).
//
// It imports nothing from the project (a test keeps it so), so that the
// workflows, the activities and every adapter (box access, store, catalog)
// can depend on it, and it on none of them.
package reconcile
