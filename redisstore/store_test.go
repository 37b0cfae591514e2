package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcguard/grpcguard/dedup"
	"github.com/grpcguard/grpcguard/dedup/storetest"
)

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestStoreConformance: the Store keeps the dedup.Store contract, each
// subtest on its own prefix of one Redis.
func TestStoreConformance(t *testing.T) {
	r := startRedis(t)
	var n atomic.Int32
	storetest.Run(t, func(t *testing.T) dedup.Store {
		return r.store(t, Options{Prefix: fmt.Sprintf("conformance-%d:", n.Add(1))})
	})
}

// TestStoreOutcomeTTLInRedis: an outcome's key expires in Redis itself after
// the TTL given to Finish, and binary outcomes survive the trip through Lua.
func TestStoreOutcomeTTLInRedis(t *testing.T) {
	r := startRedis(t)
	s := r.store(t, Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	if _, _, err := s.Claim(ctx, "k", []byte("claim-1"), time.Minute); err != nil {
		t.Fatal(err)
	}
	outcome := []byte("O\x00\xff\x01binary")
	if err := s.Finish(ctx, "k", []byte("claim-1"), outcome, time.Minute); err != nil {
		t.Fatal(err)
	}
	if raw, err := s.rdb.Get(ctx, DefaultPrefix+"k").Bytes(); err != nil || string(raw) != string(outcome) {
		t.Fatalf("the key holds %q, %v; want the outcome", raw, err)
	}
	ttl, err := s.rdb.PTTL(ctx, DefaultPrefix+"k").Result()
	if err != nil || ttl <= 50*time.Second || ttl > time.Minute {
		t.Fatalf("outcome TTL %v, %v; want about a minute", ttl, err)
	}
}

// TestStoreWaitWakesOnNotification: a duplicate waiting on one replica wakes
// when another replica finishes, through the notification: the fallback
// interval is far longer than the test.
func TestStoreWaitWakesOnNotification(t *testing.T) {
	r := startRedis(t)
	a := r.store(t, Options{PollInterval: time.Hour})
	b := r.store(t, Options{PollInterval: time.Hour})
	ctx := ctxTimeout(t, 20*time.Second)
	if _, _, err := a.Claim(ctx, "w", []byte("claim"), time.Minute); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	errc := make(chan error, 1)
	go func() {
		cur, err := b.Wait(ctx, "w", []byte("claim"))
		got <- cur
		errc <- err
	}()
	// Wait until b is subscribed and waiting, then finish on a.
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		n := len(b.waiters["w"])
		subscribed := b.ps != nil
		b.mu.Unlock()
		if n == 1 && subscribed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the waiter never subscribed")
		}
		time.Sleep(time.Millisecond)
	}
	if err := a.Finish(ctx, "w", []byte("claim"), []byte("outcome"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if cur := <-got; string(cur) != "outcome" {
		t.Fatalf("waiter got %q, want the outcome", cur)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// A waiter whose key was released sees nothing.
	if _, _, err := a.Claim(ctx, "w2", []byte("c2"), time.Minute); err != nil {
		t.Fatal(err)
	}
	go func() {
		cur, err := b.Wait(ctx, "w2", []byte("c2"))
		got <- cur
		errc <- err
	}()
	for {
		b.mu.Lock()
		n := len(b.waiters["w2"])
		b.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := a.Release(ctx, "w2", []byte("c2")); err != nil {
		t.Fatal(err)
	}
	if cur := <-got; cur != nil {
		t.Fatalf("after release: %q, want nothing", cur)
	}
	<-errc
}

// TestStoreScopeSharedAndKeptAfterDataLoss: replicas on one Redis and
// prefix share a scope, another prefix has its own. When Redis loses its
// data, the replicas put their scope back (clients that learned it go on
// resending new calls), and the loss marker makes the retention start again
// from the loss, so that a resend of an id from before is refused.
func TestStoreScopeSharedAndKeptAfterDataLoss(t *testing.T) {
	r := startRedis(t)
	a := r.store(t, Options{})
	b := r.store(t, Options{})
	other := r.store(t, Options{Prefix: "other:"})
	ctx := ctxTimeout(t, 10*time.Second)
	_, sa, err := a.Claim(ctx, "x", []byte("c"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, sb, _ := b.Claim(ctx, "y", []byte("c"), time.Minute)
	_, so, _ := other.Claim(ctx, "x", []byte("c"), time.Minute)
	if sa != sb || sa == so {
		t.Fatalf("scopes %q %q %q: want the first two equal (same Redis, same prefix), the third apart", sa, sb, so)
	}
	time.Sleep(50 * time.Millisecond)
	if keep, err := b.CheckRetention(ctx, time.Minute); err != nil || keep < 50*time.Millisecond {
		t.Fatalf("retention before any loss: %v, %v; want the time since the scope was made", keep, err)
	}
	if err := a.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, s2, _ := b.Claim(ctx, "z", []byte("c"), time.Minute); s2 != sa {
		t.Fatalf("after FLUSHALL the scope is %q, want %q kept", s2, sa)
	}
	if keep, err := a.CheckRetention(ctx, time.Minute); err != nil || keep > 40*time.Millisecond {
		t.Fatalf("retention after FLUSHALL: %v, %v; want the time since the loss", keep, err)
	}
	if adv := a.Retention(time.Minute); adv > 40*time.Millisecond {
		t.Fatalf("advertised retention after FLUSHALL: %v; want the time since the loss", adv)
	}
}

// TestStoreRedisDownFailsFast: every operation on a dead Redis fails within
// the operation timeout, with an error naming it.
func TestStoreRedisDownFailsFast(t *testing.T) {
	r := startRedis(t)
	s := r.store(t, Options{OpTimeout: 300 * time.Millisecond})
	ctx := ctxTimeout(t, 20*time.Second)
	if _, _, err := s.Claim(ctx, "k", []byte("c"), time.Minute); err != nil {
		t.Fatal(err)
	}
	r.stop()
	start := time.Now()
	_, _, err := s.Claim(ctx, "k2", []byte("c"), time.Minute)
	if err == nil || !strings.HasPrefix(err.Error(), "redisstore: claim: ") {
		t.Fatalf("claim on a dead Redis: %v", err)
	}
	if _, err := s.Wait(ctx, "k", []byte("c")); err == nil {
		t.Fatal("wait on a dead Redis succeeded")
	}
	if err := s.Finish(ctx, "k", []byte("c"), []byte("o"), time.Minute); err == nil || errors.Is(err, dedup.ErrClaimLost) {
		t.Fatalf("finish on a dead Redis: %v, want a store error", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("three operations on a dead Redis took %v", took)
	}
}
