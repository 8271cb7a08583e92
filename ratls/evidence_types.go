package ratls

// Event is one entry of a TDX event log: a measurement extended into one
// RTMR (IMR 0..3). Runtime events (EventType RuntimeEventType, RTMR3) carry
// a name and payload from which the digest is recomputed; firmware and
// kernel events carry only their stored digest.
type Event struct {
	IMR       uint32
	EventType uint32
	Digest    []byte
	Event     string
	Payload   []byte
}

// RuntimeEventType marks dstack's application (RTMR3) events.
const RuntimeEventType = 0x08000001

// Evidence is what an RA-TLS certificate (or a dstack attestation
// document) carries besides its key: the quote and the event log that
// explains the quote's RTMRs.
type Evidence struct {
	// Format is "v0" for the versioned attestation extension
	// (1.3.6.1.4.1.62397.1.8, SCALE V0) or "legacy" for the raw-quote and
	// event-log extensions (.1.1, .1.2).
	Format   string
	Quote    []byte
	EventLog []Event
	// ReportData is the envelope's report_data (V0 only); the quote's own
	// report_data is what the key binding is checked against.
	ReportData []byte
	// VMConfig is the envelope's VM configuration JSON (V0 only).
	VMConfig string
	// AppID (.1.3) and AppInfo (.1.9) are the raw extension payloads, nil
	// when absent.
	AppID   []byte
	AppInfo []byte
}

// KeyProvider is the key-provider runtime event's payload.
type KeyProvider struct {
	Name string `json:"name"`
	// ID is the provider's identity; for "kms" it is the DER
	// SubjectPublicKeyInfo of the KMS root CA.
	ID []byte `json:"-"`
}

// AppIdentity is what the RTMR3 runtime events say about the application.
// Fields are nil when the event is absent.
type AppIdentity struct {
	AppID       []byte
	ComposeHash []byte
	InstanceID  []byte
	OSImageHash []byte
	KeyProvider *KeyProvider
	// Events lists every runtime event name in log order.
	Events []string
}
