package testenv

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// Proxy is a fault-injecting TCP proxy between promoted and a database:
// tests point promoted at it and cut, stall or blind its connections at
// the moment they choose (a COMMIT whose answer never comes, a network
// that stops answering without a reset).
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	conns   map[*proxied]bool
	refuse  bool // new connections are closed at once
	stalled bool // nothing is forwarded either way
	blind   bool // the server's replies are dropped
	changed *sync.Cond
	wg      sync.WaitGroup
}

type proxied struct{ client, server net.Conn }

// StartProxy listens on a free 127.0.0.1 port and forwards to target
// (host:port).
func StartProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("testenv proxy: %w", err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[*proxied]bool{}}
	p.changed = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// ProxyFor starts a proxy in front of the cluster.
func (c *Cluster) ProxyFor() (*Proxy, error) {
	return StartProxy(net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port)))
}

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// DSN rewrites a connection string of the proxied database to go through
// the proxy.
func (p *Proxy) DSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		panic(err)
	}
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port()))
	return u.String()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			reset(c)
			continue
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			reset(c)
			continue
		}
		pc := &proxied{client: c, server: s}
		p.mu.Lock()
		p.conns[pc] = true
		p.mu.Unlock()
		go p.pipe(pc, c, s, false)
		go p.pipe(pc, s, c, true)
	}
}

// pipe copies one direction, honouring stalls and blinding.
func (p *Proxy) pipe(pc *proxied, from, to net.Conn, reply bool) {
	buf := make([]byte, 32<<10)
	defer p.drop(pc)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.stalled && p.conns[pc] {
				p.changed.Wait()
			}
			live, blind := p.conns[pc], p.blind && reply
			p.mu.Unlock()
			if !live {
				return
			}
			if !blind {
				if _, werr := to.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			if tc, ok := to.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
	}
}

func (p *Proxy) drop(pc *proxied) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns[pc] {
		delete(p.conns, pc)
		reset(pc.client)
		reset(pc.server)
		p.changed.Broadcast()
	}
}

// reset closes a connection with a TCP RST, as a crashed peer or a
// firewall would.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// Cut resets every open connection.
func (p *Proxy) Cut() {
	p.mu.Lock()
	conns := make([]*proxied, 0, len(p.conns))
	for pc := range p.conns {
		conns = append(conns, pc)
	}
	p.mu.Unlock()
	for _, pc := range conns {
		p.drop(pc)
	}
}

// Refuse makes new connections fail (reset on accept) until Heal.
func (p *Proxy) Refuse() { p.set(func() { p.refuse = true }) }

// Stall stops forwarding in both directions without closing anything:
// the network goes silent, no RST, until Heal.
func (p *Proxy) Stall() { p.set(func() { p.stalled = true }) }

// Blind drops every reply of the server from now on, while the client's
// messages still reach it: a COMMIT is executed but its answer never
// arrives. After d, every connection is reset.
func (p *Proxy) Blind(d time.Duration) {
	p.set(func() { p.blind = true })
	time.AfterFunc(d, func() {
		p.Cut()
		p.set(func() { p.blind = false })
	})
}

// Heal ends Refuse, Stall and Blind; connections cut stay cut.
func (p *Proxy) Heal() { p.set(func() { p.refuse, p.stalled, p.blind = false, false, false }) }

func (p *Proxy) set(f func()) {
	p.mu.Lock()
	f()
	p.changed.Broadcast()
	p.mu.Unlock()
}

// Close stops the proxy and resets its connections.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}
