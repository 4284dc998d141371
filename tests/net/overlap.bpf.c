// SPDX-License-Identifier: GPL-2.0
/* A test-only tc program (tests/net/sockmap.sh t_57): makes a TCP receiver
 * queue segments that overlap bytes it already has, on demand.
 *
 * On egress, every OVERLAP_EVERY-th IPv4 TCP segment of a watched port
 * with more than OVERLAP_SHIFT bytes of data is sent twice: first a copy
 * whose sequence number is OVERLAP_SHIFT lower, then the segment itself.
 * The receiver, whose rcv_nxt is the segment's seq, takes the copy as a
 * "partial packet" (seq < rcv_nxt < end_seq, tcp_data_queue) and then the
 * original likewise: both are queued whole with a head it already has.
 * recvmsg() skips such heads; the test checks that sluice's sockmap verdict
 * does too.  The copy carries the original's payload at other stream
 * offsets, so the test sends a stream of zero bytes (client --seed 0),
 * which every shift leaves unchanged: a repeated head then shows as extra
 * bytes. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define OVERLAP_EVERY 40
#define OVERLAP_SHIFT 568
#define MARK_COPY     0x51c3

/* Ports whose segments are doubled: the sockmap listener (client side;
 * 5004 in tests/net, 7004 in tests/vm) and the echo upstreams (upstream
 * side). */
#define PORT_LISTENER    5004
#define PORT_LISTENER_VM 7004
#define PORT_UPSTREAM    9000

__u64 seen = 0;         /* segments looked at (bpftool map dump shows them) */
__u64 doubled = 0;      /* copies sent */

SEC("tc")
int overlap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct tcphdr *th;
	/* where the copy's sequence number and checksum sit */
	const __u32 seq_off = sizeof(*eth) + sizeof(*ip) + offsetof(struct tcphdr, seq);
	const __u32 csum_off = sizeof(*eth) + sizeof(*ip) + offsetof(struct tcphdr, check);
	__u32 seq, shifted, payload;

	if (skb->mark == MARK_COPY)
		return TC_ACT_OK;       /* our own copy, coming through again */
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl != 5)
		return TC_ACT_OK;
	th = (void *)(ip + 1);
	if ((void *)(th + 1) > end)
		return TC_ACT_OK;
	if (th->dest != bpf_htons(PORT_LISTENER) && th->dest != bpf_htons(PORT_LISTENER_VM) &&
	    th->source != bpf_htons(PORT_UPSTREAM))
		return TC_ACT_OK;
	payload = skb->len - sizeof(*eth) - sizeof(*ip) - th->doff * 4;
	if (th->syn || th->fin || th->rst || payload <= OVERLAP_SHIFT)
		return TC_ACT_OK;
	if (__sync_fetch_and_add(&seen, 1) % OVERLAP_EVERY != OVERLAP_EVERY - 1)
		return TC_ACT_OK;
	seq = th->seq;
	shifted = bpf_htonl(bpf_ntohl(seq) - OVERLAP_SHIFT);
	/* The copy: shifted seq (checksum fixed), sent now, before the
	 * original; the original then goes on unchanged. */
	if (bpf_l4_csum_replace(skb, csum_off, seq, shifted, sizeof(seq)) < 0 ||
	    bpf_skb_store_bytes(skb, seq_off, &shifted, sizeof(shifted), 0) < 0)
		return TC_ACT_OK;
	skb->mark = MARK_COPY;
	if (bpf_clone_redirect(skb, skb->ifindex, 0) == 0)
		__sync_fetch_and_add(&doubled, 1);
	skb->mark = 0;
	if (bpf_l4_csum_replace(skb, csum_off, shifted, seq, sizeof(seq)) < 0 ||
	    bpf_skb_store_bytes(skb, seq_off, &seq, sizeof(seq), 0) < 0)
		return TC_ACT_SHOT;     /* cannot restore it: TCP retransmits */
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
