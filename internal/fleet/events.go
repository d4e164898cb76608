package fleet

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A box records what happened on it, as the box itself sees it, so that a
// test can judge the reconciler without asking it anything: every plugin
// directory renamed into the plugin root is a swap, every new runtime
// invocation id is a restart. The fleet reads both from one inotify
// instance, and the kernel queues the events of one instance in the order
// they happened, so the order of a box's swaps and restarts is exact even
// when their timestamps are a few microseconds apart.

// EventKind is what happened on a box.
type EventKind string

// Event kinds.
const (
	// Swap: a plugin directory appeared in the plugin root by a rename (an
	// install's swap, or the completion of an interrupted one).
	Swap EventKind = "swap"
	// Removal: a plugin directory left the plugin root by a rename or a
	// delete.
	Removal EventKind = "removal"
	// Restart: the runtime started again (a new invocation id).
	Restart EventKind = "restart"
)

// Event is one thing that happened on a box.
type Event struct {
	Seq    int64 // fleet-wide order
	At     time.Time
	Kind   EventKind
	Plugin string `json:",omitempty"`
}

func (e Event) String() string {
	if e.Plugin != "" {
		return fmt.Sprintf("%s %s %s", e.At.Format("15:04:05.000"), e.Kind, e.Plugin)
	}
	return fmt.Sprintf("%s %s", e.At.Format("15:04:05.000"), e.Kind)
}

// watcher is the fleet's inotify reader.
type watcher struct {
	f    *os.File
	mu   sync.Mutex
	wds  map[int]watch
	seq  int64
	err  error
	done chan struct{}
}

type watch struct {
	box     *Box
	runtime bool // the runtime directory, not the plugin root
}

func newWatcher() (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &watcher{f: os.NewFile(uintptr(fd), "inotify"), wds: map[int]watch{}, done: make(chan struct{})}
	go w.read()
	return w, nil
}

func (w *watcher) add(b *Box) error {
	for _, x := range []struct {
		dir     string
		runtime bool
		mask    uint32
	}{
		{b.PluginRoot, false, unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_DELETE | unix.IN_ONLYDIR},
		{b.RuntimeDir, true, unix.IN_MOVED_TO | unix.IN_ONLYDIR},
	} {
		wd, err := unix.InotifyAddWatch(int(w.f.Fd()), x.dir, x.mask)
		if err != nil {
			return fmt.Errorf("watch %s: %w", x.dir, err)
		}
		w.mu.Lock()
		w.wds[wd] = watch{box: b, runtime: x.runtime}
		w.mu.Unlock()
	}
	return nil
}

func (w *watcher) close() {
	_ = w.f.Close()
	<-w.done
}

func (w *watcher) read() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				w.fail(fmt.Errorf("read inotify: %w", err))
			}
			return
		}
		now := time.Now()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			name = bytes.TrimRight(name, "\x00")
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				w.fail(errors.New("inotify queue overflowed: box events were lost"))
				continue
			}
			w.handle(int(ev.Wd), ev.Mask, string(name), now)
		}
	}
}

func (w *watcher) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *watcher) handle(wd int, mask uint32, name string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	x, ok := w.wds[wd]
	if !ok || name == "" {
		return
	}
	var kind EventKind
	switch {
	case x.runtime && strings.HasPrefix(name, "flush-"):
		x.box.evMu.Lock()
		x.box.flushed, _ = strconv.Atoi(strings.TrimPrefix(name, "flush-"))
		x.box.evMu.Unlock()
		return
	case x.runtime:
		if name != "invocation-id" || mask&unix.IN_MOVED_TO == 0 {
			return
		}
		kind = Restart
	case name[0] == '.' || mask&unix.IN_ISDIR == 0:
		return // staging, previous versions, locks, the reconciler's state
	case mask&unix.IN_MOVED_TO != 0:
		kind = Swap
	default:
		kind = Removal
	}
	w.seq++
	e := Event{Seq: w.seq, At: at, Kind: kind}
	if kind != Restart {
		e.Plugin = name
	}
	x.box.evMu.Lock()
	x.box.events = append(x.box.events, e)
	x.box.evMu.Unlock()
}

// Events lists what happened on the box since it started, in order, up to
// the moment of the call: it waits until the reader has seen a marker made
// after everything before it. It fails if events were lost.
func (b *Box) Events() ([]Event, error) {
	b.evMu.Lock()
	b.flushes++
	n := b.flushes
	b.evMu.Unlock()
	tmp := filepath.Join(b.RuntimeDir, ".flush")
	if err := os.WriteFile(tmp, nil, 0o644); err != nil {
		return nil, err
	}
	marker := filepath.Join(b.RuntimeDir, "flush-"+strconv.Itoa(n))
	if err := os.Rename(tmp, marker); err != nil {
		return nil, err
	}
	defer os.Remove(marker)
	for deadline := time.Now().Add(10 * time.Second); ; {
		b.evMu.Lock()
		seen := b.flushed >= n
		b.evMu.Unlock()
		if seen {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("box %s: the event reader did not catch up in 10s", b.InstanceID)
		}
		time.Sleep(2 * time.Millisecond)
	}
	w := b.fleet.watcher
	w.mu.Lock()
	err := w.err
	w.mu.Unlock()
	b.evMu.Lock()
	defer b.evMu.Unlock()
	return append([]Event(nil), b.events...), err
}
