package fleet

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// linkProxy stands between a box's address and its sshd and adds a one-way
// delay to every byte in both directions, like a network path with that
// propagation delay (throughput is not capped; TCP and SSH windows apply as
// on a real long link). A delay of zero passes bytes straight through.
type linkProxy struct {
	ln      net.Listener
	backend string
	delay   atomic.Int64 // nanoseconds, each way
	frozen  atomic.Bool  // hold every byte (see Box.Freeze)
	open    atomic.Int64 // client connections being served
	wg      sync.WaitGroup
}

func startLinkProxy(addr, backend string) (*linkProxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &linkProxy{ln: ln, backend: backend}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *linkProxy) close() {
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *linkProxy) serve() {
	defer p.wg.Done()
	for {
		front, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(front)
	}
}

func (p *linkProxy) handle(front net.Conn) {
	// A connection counts as open until the client side ends it (or the
	// proxy does), even while frozen bytes are held.
	p.open.Add(1)
	var closed sync.Once
	ended := func() { closed.Do(func() { p.open.Add(-1) }) }
	defer ended()
	defer front.Close()
	back, err := net.DialTimeout("tcp", p.backend, 5*time.Second)
	if err != nil {
		return // sshd is down: the connection drops, as on an outage
	}
	defer back.Close()
	done := make(chan struct{}, 2)
	go func() { p.pipe(back, front, ended); done <- struct{}{} }()
	go func() { p.pipe(front, back, nil); done <- struct{}{} }()
	<-done
	// Let the other direction deliver what is still in flight, then end.
	grace := time.Now().Add(2*time.Duration(p.delay.Load()) + 5*time.Second)
	_ = front.SetDeadline(grace)
	_ = back.SetDeadline(grace)
	<-done
}

// pipe copies src to dst, releasing each chunk only when its delay is up;
// srcEnded, if set, is called as soon as reading src fails.
func (p *linkProxy) pipe(dst, src net.Conn, srcEnded func()) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	chunks := make(chan chunk, 4096)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				chunks <- chunk{buf[:n], time.Now().Add(time.Duration(p.delay.Load()))}
			}
			if err != nil {
				if srcEnded != nil {
					srcEnded()
				}
				return
			}
		}
	}()
	for c := range chunks {
		if d := time.Until(c.at); d > 0 {
			time.Sleep(d)
		}
		for p.frozen.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	if tcp, ok := dst.(*net.TCPConn); ok {
		_ = tcp.CloseWrite()
	}
}
