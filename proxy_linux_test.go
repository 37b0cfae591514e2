//go:build linux

package grpcguard

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/internal/netns"
	"github.com/grpcguard/grpcguard/internal/testutil"
)

// Through tinyproxy, the probe watches the socket to the proxy: when the
// server closes its connection, tinyproxy closes the client's leg, and the
// Dialer's conn refuses its next write after idle, having sent nothing, as it
// does for a direct server's FIN.
func TestProxyPeerCloseFoundThroughTinyproxy(t *testing.T) {
	n := testutil.NewProxyNet(t)
	tp := n.StartTinyproxy(t, 3128, "")
	ln := n.Listen(t)
	defer ln.Close()
	u, _ := url.Parse("http://" + tp.Addr)
	d := proxyDialer(t, http.ProxyURL(u), WithProbeAfterIdle(time.Millisecond))
	defer d.Close()
	var nc net.Conn
	var err error
	dial := nsDialer(n.Client, d.DialContext)
	ctx := ctxTimeout(t, 5*time.Second)
	if nc, err = dial(ctx, ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := nc.(*conn)
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// The tunnel works both ways, then the server closes.
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("server read %q, %v", buf, err)
	}
	s.Close()
	waitPeerGone(t, c)
	waitFor(t, time.Second, "the conn to be idle", func() bool { return c.probeDue(nanotime()) })
	n2, err := c.Write([]byte("request"))
	var se *StaleConnError
	if n2 != 0 || !errors.As(err, &se) || se.Reason != PeerClosed || se.Op != "write" {
		t.Fatalf("Write after the server's close = %d, %v; want 0 and a peer_closed StaleConnError from write", n2, err)
	}
}

// nsDialer wraps dial so that its sockets are created in the namespace ns.
func nsDialer(ns string, dial dialFunc) dialFunc { return netns.Namespace(ns).Wrap(dial) }
