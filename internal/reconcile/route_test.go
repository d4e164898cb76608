package reconcile

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPickBoxQueue(t *testing.T) {
	t.Parallel()
	a, b, c := BoxQueue("1@host-a@x"), BoxQueue("1@host-b@y"), BoxQueue("1@host-c@z")
	tests := []struct {
		desc        string
		live, avoid []string
		want        func(got string) bool
	}{
		{"no worker: the shared queue", nil, nil, func(got string) bool { return got == "" }},
		{"one worker", []string{a}, nil, func(got string) bool { return got == a }},
		{"all avoided", []string{a, b}, []string{a, b}, func(got string) bool { return got == "" }},
		{"the one avoided is never picked", []string{a, b, c}, []string{PickBoxQueue("ws-1", []string{a, b, c}, nil)}, func(got string) bool {
			return got != "" && got != PickBoxQueue("ws-1", []string{a, b, c}, nil)
		}},
		{"the order workers are listed in does not matter", []string{c, a, b}, nil, func(got string) bool { return got == PickBoxQueue("ws-1", []string{a, b, c}, nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got := PickBoxQueue("ws-1", tt.live, tt.avoid)
			require.True(t, tt.want(got), "got %q", got)
		})
	}
}

// A worker leaving moves only the workspaces it held; the others keep
// their worker (and its connection to their box). Workspaces spread over
// the workers.
func TestPickBoxQueueMovesOnlyWhatTheGoneWorkerHeld(t *testing.T) {
	t.Parallel()
	live := []string{BoxQueue("a"), BoxQueue("b"), BoxQueue("c")}
	held := map[string]int{}
	for i := range 300 {
		ws := fmt.Sprintf("ws-%03d", i)
		before := PickBoxQueue(ws, live, nil)
		held[before]++
		after := PickBoxQueue(ws, live, []string{live[0]})
		if before != live[0] {
			require.Equal(t, before, after, ws)
		} else {
			require.NotEqual(t, live[0], after, ws)
		}
	}
	for _, q := range live {
		require.Greater(t, held[q], 60, "%s holds a fair share: %v", q, held)
	}
}
