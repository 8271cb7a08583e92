package ratls

import "github.com/pgtrust/pgtrust/failure"

// Quote-provider classes (simulator and configfs-tsm).
const (
	// ClassSimulator: the quote comes from pgtrust's TDX simulator (its PCK
	// chain ends in the simulator's own marked root), and the verifier did
	// not allow simulated evidence.
	ClassSimulator failure.Class = "attestation_simulator"
	// ClassProvider: a quote provider could not produce a quote (no TDX
	// guest, no configfs-tsm, a kernel or quoting-service error, a quote
	// that does not carry the requested report_data) or was misconfigured.
	ClassProvider failure.Class = "attestation_provider"
)

// providerClasses is folded into Classes by the lead.
var providerClasses = []failure.Class{ClassSimulator, ClassProvider}

const fixSimulator = "this quote comes from pgtrust's TDX simulator, not hardware; set allow_simulator = true only for development"
