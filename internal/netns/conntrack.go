//go:build linux

package netns

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// conntrackRules is the router's firewall: a packet of a flow the kernel no
// longer tracks is INVALID and answered with a RST. (`fwd` is a keyword of
// nft: the chain is named forward.)
const conntrackRules = `table inet grpcguard {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state invalid reject with tcp reset
	}
}
`

// Conntrack makes the router a stateful firewall that forgets a TCP flow
// idle for idle (whole seconds, at least 1) and answers its next packet,
// from either side, with a RST: what an AWS NAT gateway or NLB does after
// its idle timeout. It needs nft.
//
// nf_conntrack_tcp_loose=0 keeps the kernel from adopting a mid-stream
// packet as a new flow (without it nothing fails). Both sysctls are the
// router namespace's own.
func (n *Net) Conntrack(idle time.Duration) error {
	secs := int(idle / time.Second)
	if secs < 1 || idle%time.Second != 0 {
		return fmt.Errorf("netns: conntrack idle timeout %v: want whole seconds, at least 1", idle)
	}
	cmd := n.Router.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(conntrackRules)
	if err := run(cmd); err != nil {
		return unsupportedf("the kernel refused nftables in a namespace: %v", err)
	}
	// The conntrack sysctls appear once the rules have loaded nf_conntrack.
	if err := n.Router.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0"); err != nil {
		return err
	}
	return n.Router.sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", strconv.Itoa(secs))
}
