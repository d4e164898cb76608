package pgcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

var (
	sharedOnce sync.Once
	shared     *Cluster
	sharedDir  string
	sharedErr  error
)

// NewTestDatabase returns the DSN of a new, empty database for one test. It
// uses TEST_DATABASE_URL's server when set, else a private cluster shared by
// the test binary; call StopShared from TestMain after the tests.
func NewTestDatabase(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs Postgres (skipped with -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := os.Getenv("TEST_DATABASE_URL")
	if admin == "" {
		sharedOnce.Do(func() {
			sharedDir, sharedErr = os.MkdirTemp("", "pgcluster-")
			if sharedErr == nil {
				shared, sharedErr = Start(ctx, sharedDir, 0)
			}
		})
		if sharedErr != nil {
			t.Fatalf("private postgres: %v", sharedErr)
		}
		admin = shared.DSN("postgres")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("test_%s", hex.EncodeToString(b[:]))
	dsn, err := CreateDatabase(ctx, admin, name)
	if err != nil {
		t.Fatalf("create test database: %v", err)
	}
	// Registered first, so it runs after the test's own cleanups close
	// their connections.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := DropDatabase(ctx, admin, name); err != nil {
			t.Logf("drop test database: %v", err)
		}
	})
	return dsn
}

// StopShared stops the shared private cluster, if one was started, and
// removes its files.
func StopShared() {
	if shared != nil {
		shared.Stop()
		_ = os.RemoveAll(sharedDir)
	}
}

// TestMain runs a package's tests and stops the shared cluster afterwards.
func TestMain(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}
