package grpcguard

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestOriginalCtx: a context derived from the original attempt's (as grpc
// derives each stream's) ends when the hedging interceptor cancels the
// attempt, or when the call's own context ends, and not otherwise; the
// context is reused only when nothing holds on to it.
func TestOriginalCtx(t *testing.T) {
	t.Run("cancel", func(t *testing.T) {
		var c originalCtx
		c.reset(context.Background())
		child, cancelChild := context.WithCancel(&c)
		defer cancelChild()
		grand, cancelGrand := context.WithTimeout(child, time.Hour)
		defer cancelGrand()
		if child.Err() != nil || c.Err() != nil {
			t.Fatal("done before anything happened")
		}
		c.cancel(context.Canceled)
		waitClosed(t, grand.Done(), 5*time.Second, "the grandchild to end")
		if !errors.Is(child.Err(), context.Canceled) || !errors.Is(c.Err(), context.Canceled) {
			t.Errorf("errors %v, %v", child.Err(), c.Err())
		}
		if c.release() {
			t.Error("a cancelled context was reusable")
		}
	})
	t.Run("call context ends", func(t *testing.T) {
		call, cancelCall := context.WithCancel(context.Background())
		var c originalCtx
		c.reset(call)
		child, cancelChild := context.WithCancel(&c)
		defer cancelChild()
		cancelCall()
		waitClosed(t, child.Done(), 5*time.Second, "the child to end with the call")
		waitClosed(t, c.Done(), 5*time.Second, "Done to close with the call")
		if !errors.Is(c.Err(), context.Canceled) {
			t.Errorf("Err %v", c.Err())
		}
	})
	t.Run("reused", func(t *testing.T) {
		call, cancelCall := context.WithTimeout(context.Background(), time.Hour)
		defer cancelCall()
		var c originalCtx
		for i := range 3 {
			c.reset(call)
			done := c.Done()
			child, cancelChild := context.WithCancel(&c)
			child2, cancelChild2 := context.WithCancel(&c) // a second registration: not reg0
			cancelChild()
			cancelChild2()
			if child.Err() == nil || child2.Err() == nil {
				t.Fatal("children not cancelled by their own cancel")
			}
			if !c.release() {
				t.Fatalf("round %d: not reusable after a clean call", i)
			}
			if i > 0 && c.Done() != done {
				t.Error("the channel was not reused")
			}
			c.clear()
		}
		c.reset(call)
		_, leak := context.WithCancel(&c) // still registered at the end of the call
		if c.release() {
			t.Error("reusable while a child is still registered")
		}
		leak()
	})
}
