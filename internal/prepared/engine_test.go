package prepared

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrust/pgtrust/failure"
)

// The reserved prefix is refused in every place a client names a statement,
// so no client can reach another client's statements by their server name.
func TestReservedPrefixRefused(t *testing.T) {
	taken := newStatement(parseOf("SELECT 1"), "").serverName
	for _, m := range []pgproto3.FrontendMessage{
		parse(taken, "SELECT 1"), bind("", taken), descS(taken),
	} {
		c, sc := NewClient(), NewServerCache(0)
		out, err := c.Translate(m, sc)
		var fe *failure.Error
		if !errors.As(err, &fe) || fe.Class != failure.ProtocolError || fe.Fix == "" || out != nil {
			t.Errorf("%T %q: out %v, err %#v", m, taken, out, err)
		}
		if sc.Outstanding() != 0 || c.Statements() != 0 {
			t.Errorf("%T: refusal left state behind", m)
		}
	}
}

// A response that answers nothing outstanding means the stream is out of
// step: Filter refuses rather than guess.
func TestFilterRefusesUnmatchedResponse(t *testing.T) {
	c, sc := NewClient(), NewServerCache(0)
	for _, m := range []pgproto3.BackendMessage{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.CloseComplete{}} {
		out, err := c.Filter(m, sc)
		var fe *failure.Error
		if !errors.As(err, &fe) || fe.Class != failure.ProtocolError || out != nil {
			t.Errorf("%T: out %v err %v", m, out, err)
		}
	}
}

// With nothing outstanding, synthesized answers are due at once; behind a
// real request they wait for its answer, in order.
func TestSynthesizedAnswerOrder(t *testing.T) {
	c, sc := NewClient(), NewServerCache(0)
	mustT := func(m pgproto3.FrontendMessage) []pgproto3.FrontendMessage {
		t.Helper()
		out, err := c.Translate(m, sc)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	mustT(parse("a", "SELECT 1"))
	if imm := c.TakeImmediate(); len(imm) != 0 {
		t.Fatalf("immediate %v behind an outstanding Parse", imm)
	}
	// Same content under another name: swallowed, answered after a's.
	if out := mustT(parse("b", "SELECT 1")); len(out) != 0 {
		t.Fatalf("swallowed Parse sent %v", out)
	}
	mustT(closeS("a"))
	got, err := c.Filter(&pgproto3.ParseComplete{}, sc)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range got {
		names = append(names, strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3."))
	}
	if strings.Join(names, ",") != "ParseComplete,ParseComplete,CloseComplete" || sc.Outstanding() != 0 {
		t.Fatalf("answers %v, outstanding %d", names, sc.Outstanding())
	}
	mustT(closeS("b"))
	if imm := c.TakeImmediate(); len(imm) != 1 {
		t.Fatalf("Close with nothing outstanding: immediate %v", imm)
	}
	if c.Statements() != 0 || sc.Len() != 1 {
		t.Fatalf("client %d statements, server cache %d (closing keeps the server copy)", c.Statements(), sc.Len())
	}
}

// A duplicate Parse of the very same statement: when the probe succeeds (the
// old statement was gone from the server), the statement is sent again and is
// cached afterwards; the client sees one ParseComplete.
func TestDuplicateSameStatementProbeSucceeds(t *testing.T) {
	c, sc := NewClient(), NewServerCache(0)
	if _, err := c.Translate(parse("s", "SELECT 1"), sc); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Filter(&pgproto3.ParseComplete{}, sc); err != nil {
		t.Fatal(err)
	}
	out, err := c.Translate(parse("s", "SELECT 1"), sc)
	if err != nil {
		t.Fatal(err)
	}
	x := newStatement(parseOf("SELECT 1"), "").serverName
	if len(out) != 3 || out[0].(*pgproto3.Parse).Name != x || out[0].(*pgproto3.Parse).Query != "SELECT 1" ||
		out[1].(*pgproto3.Close).Name != x || out[2].(*pgproto3.Parse).Name != x {
		t.Fatalf("sent %#v", out)
	}
	var seen []pgproto3.BackendMessage
	for _, m := range []pgproto3.BackendMessage{&pgproto3.ParseComplete{}, &pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}} {
		got, err := c.Filter(m, sc)
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, got...)
	}
	if len(seen) != 1 || sc.Len() != 1 || sc.Outstanding() != 0 {
		t.Fatalf("client saw %d messages, cache %d, outstanding %d", len(seen), sc.Len(), sc.Outstanding())
	}
}

func typeNames(ms []pgproto3.BackendMessage) string {
	var names []string
	for _, m := range ms {
		names = append(names, strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3."))
	}
	return strings.Join(names, ",")
}

// Rewrite returns the answers due at once with the server messages, so they
// cannot be sent out of order.
func TestRewriteReturnsImmediateAnswers(t *testing.T) {
	c, sc := NewClient(), NewServerCache(0)
	toServer, toClient, err := c.Rewrite(closeS("nosuch"), sc)
	if err != nil || len(toServer) != 0 || typeNames(toClient) != "CloseComplete" {
		t.Fatalf("Close with nothing outstanding: %v %v %v", toServer, toClient, err)
	}
	toServer, toClient, err = c.Rewrite(parse("a", "SELECT 1"), sc)
	if err != nil || len(toServer) != 1 || len(toClient) != 0 {
		t.Fatalf("Parse: %v %v %v", toServer, toClient, err)
	}
	if imm := c.TakeImmediate(); len(imm) != 0 {
		t.Fatalf("Rewrite left %v for TakeImmediate", imm)
	}
}

// A session that calls Translate but takes the immediate answers late: the
// next server response carries them first, so the client still sees answers
// in the order of its requests.
func TestLateTakeImmediateKeepsOrder(t *testing.T) {
	c, sc := NewClient(), NewServerCache(0)
	if _, err := c.Translate(closeS("nosuch"), sc); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Translate(parse("a", "SELECT 1"), sc); err != nil {
		t.Fatal(err)
	}
	got, err := c.Filter(&pgproto3.ParseComplete{}, sc)
	if err != nil {
		t.Fatal(err)
	}
	if typeNames(got) != "CloseComplete,ParseComplete" {
		t.Fatalf("Filter gave %s, want the pending CloseComplete first", typeNames(got))
	}
	if imm := c.TakeImmediate(); len(imm) != 0 {
		t.Fatalf("taken twice: %v", imm)
	}
}

// A message naming a statement, pipelined behind a Query or a segment that
// may drop statements, waits for its answer; other Queries do not hold it.
func TestWaitBehindStatementDrop(t *testing.T) {
	dropped := []pgproto3.BackendMessage{&pgproto3.CommandComplete{CommandTag: []byte("DEALLOCATE ALL")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}}
	extended := append([]pgproto3.BackendMessage{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}}, dropped...)
	for _, tc := range []struct {
		ahead  []pgproto3.FrontendMessage
		wait   bool
		answer []pgproto3.BackendMessage
	}{
		{[]pgproto3.FrontendMessage{query("DEALLOCATE ALL")}, true, dropped},
		{[]pgproto3.FrontendMessage{query("discard all")}, true, dropped},
		{[]pgproto3.FrontendMessage{query("SELECT 1")}, false, nil},
		{[]pgproto3.FrontendMessage{parse("", "DEALLOCATE ALL"), bind("", ""), exec(""), syncMsg()}, true, extended},
		{[]pgproto3.FrontendMessage{parse("", "SELECT 2"), bind("", ""), exec(""), syncMsg()}, false, nil},
	} {
		c, sc := NewClient(), NewServerCache(0)
		ahead := fmt.Sprintf("%d messages ending %#v", len(tc.ahead), tc.ahead[len(tc.ahead)-1])
		filter := func(msgs ...pgproto3.BackendMessage) {
			t.Helper()
			for _, m := range msgs {
				if _, err := c.Filter(m, sc); err != nil {
					t.Fatal(err)
				}
			}
		}
		translate := func(msgs ...pgproto3.FrontendMessage) {
			t.Helper()
			for _, m := range msgs {
				if _, err := c.Translate(m, sc); err != nil {
					t.Fatal(err)
				}
			}
		}
		translate(parse("s", "SELECT 1"), syncMsg())
		filter(&pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		translate(tc.ahead...)
		for _, m := range []pgproto3.FrontendMessage{descS("s"), bind("", "s"), parse("t", "SELECT 3"), closeS("s")} {
			_, err := c.Translate(m, sc)
			if got := errors.Is(err, ErrWait); got != tc.wait {
				t.Errorf("%v then %T: ErrWait %v, want %v (err %v)", ahead, m, got, tc.wait, err)
			}
			if err == nil {
				break // translated: the state moved on
			}
		}
		if !tc.wait {
			continue
		}
		select {
		case <-sc.Settled():
			t.Errorf("%v: settled before its answer", ahead)
		default:
		}
		filter(tc.answer...)
		select {
		case <-sc.Settled():
		default:
			t.Errorf("%v: not settled after its answer", ahead)
		}
		// The statement is gone, as on PostgreSQL: the Describe goes to
		// the server as the client's name, which PostgreSQL answers 26000.
		out, err := c.Translate(descS("s"), sc)
		if err != nil || len(out) != 1 || out[0].(*pgproto3.Describe).Name != "s" {
			t.Errorf("%v: after the drop, Describe translated to %v, %v", ahead, out, err)
		}
	}
}

// A session that got ErrWait behind a COPY's Query and asks Settled after
// the CopyInResponse arrived must not wait: the server now waits for the
// copy data, which the session reads only once it goes on.
func TestSettledDuringCopyIn(t *testing.T) {
	c, sc := NewClient(), NewServerCache(0)
	if _, err := c.Translate(query("COPY zz_settings FROM STDIN"), sc); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Translate(parse("s1", "SELECT 1"), sc); !errors.Is(err, ErrWait) {
		t.Fatalf("a named Parse behind a Query that may SET: %v, want ErrWait", err)
	}
	if _, err := c.Filter(&pgproto3.CopyInResponse{}, sc); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sc.Settled():
	default:
		t.Fatal("Settled is not ready during COPY FROM STDIN: the session would never read the copy data")
	}
	if _, err := c.Translate(parse("s1", "SELECT 1"), sc); err != nil {
		t.Fatalf("retry during COPY: %v", err)
	}
}
