package dialroute

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestReadResponseHead(t *testing.T) {
	const head = "HTTP/1.1 200 OK\r\nA: \r\r\n\r\n"
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
	} {
		r := bytes.NewReader([]byte(head + "tunnel"))
		got, err := readResponseHead(wrap(r))
		if string(got) != head || err != nil {
			t.Errorf("%s: got %q, %v; want the head", name, got, err)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "tunnel" {
			t.Errorf("%s: left %q unread, want %q", name, rest, "tunnel")
		}
	}
	if _, err := readResponseHead(strings.NewReader("HTTP/1.1 200 OK\r\n")); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated head: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := readResponseHead(strings.NewReader(strings.Repeat("x", maxProxyResponseHead+10))); err == nil {
		t.Error("a head over the limit was accepted")
	}
}

func TestWithDefaultPort(t *testing.T) {
	for in, want := range map[string]string{
		"host": "host:443", "host:80": "host:80", ":80": "localhost:80",
		"[::1]:5": "[::1]:5", "::1": "[::1]:443", "10.0.0.1": "10.0.0.1:443",
	} {
		if got, err := withDefaultPort(in); got != want || err != nil {
			t.Errorf("withDefaultPort(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "host:"} {
		if _, err := withDefaultPort(in); err == nil {
			t.Errorf("withDefaultPort(%q) succeeded", in)
		}
	}
}
