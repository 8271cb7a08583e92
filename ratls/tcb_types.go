package ratls

import "time"

// TCBStatus is an Intel TCB status, as TCB info and QE identity name them.
type TCBStatus string

// The TCB statuses of Intel's TCB info v3 and QE identity v2.
const (
	StatusUpToDate                          TCBStatus = "UpToDate"
	StatusSWHardeningNeeded                 TCBStatus = "SWHardeningNeeded"
	StatusConfigurationNeeded               TCBStatus = "ConfigurationNeeded"
	StatusConfigurationAndSWHardeningNeeded TCBStatus = "ConfigurationAndSWHardeningNeeded"
	StatusOutOfDate                         TCBStatus = "OutOfDate"
	StatusOutOfDateConfigurationNeeded      TCBStatus = "OutOfDateConfigurationNeeded"
	StatusRevoked                           TCBStatus = "Revoked"
)

// Appraisal is the TCB verdict for one quote against its collateral.
type Appraisal struct {
	// Status is the combined status (the worse of platform, TDX module
	// and QE), the one a policy accepts or refuses.
	Status         TCBStatus
	PlatformStatus TCBStatus
	ModuleStatus   TCBStatus
	QEStatus       TCBStatus
	// AdvisoryIDs are the Intel security advisories (INTEL-SA-xxxxx) of
	// the matched levels, sorted and de-duplicated.
	AdvisoryIDs []string
	TCBDate     time.Time
	// FMSPC is the platform family (hex, lowercase) from the PCK
	// certificate.
	FMSPC                   string
	TCBEvaluationDataNumber int
	// CollateralValidUntil is the earliest nextUpdate of the collateral
	// used: the appraisal holds until then.
	CollateralValidUntil time.Time
}
