/* XTrace's drop and TCP event counters: raw tracepoint programs, apart from the traffic program
 * (bpf/xtrace.c), so that its per-packet cost is the same whether these are loaded or not.
 *
 *   xtrace_drop         skb:kfree_skb (skb, location, reason, rx_sk): a packet the kernel freed
 *                       as dropped, counted per flow and reason
 *   xtrace_tcp_retrans  tcp:tcp_retransmit_skb (sk, skb, err): segments retransmitted
 *   xtrace_tcp_probe    tcp:tcp_probe (sk, skb): the socket's smoothed RTT, once per segment received
 *
 * Kernel structs are read with bpf_probe_read_kernel at offsets the agent resolved from the
 * running kernel's BTF (xtrace_agent/xdp/btf.py) and passes as -D XT_OFF_*: the kernel headers
 * this is compiled with are used for UAPI constants only, never for a struct layout.
 *
 * Attribution: a drop belongs to the interface it was received on (skb_iif) or, for a packet
 * this host sends, the device it is leaving through (skb->dev), in that device's network
 * namespace; a socket to the device its route goes through (sk_dst_cache->dev). Only an
 * ifindex | direction the agent put in `watched`, in the namespace it put there, counts. Keys are the traffic
 * program's struct flow_key (xtrace.h), so the labels are the traffic flows' labels.
 *
 * Counting follows the traffic program's discipline: two tables per kind, swapped by the agent
 * through an array of maps (the update returns after an RCU grace period), so a drained table
 * has no writer; an event with no room in its table goes to a place that always exists (drops:
 * the cumulative `drops_full`, per interface and reason; TCP: the interface's untracked entry,
 * inserted by the agent), and only if that too is full to `lost`, cumulative and global.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#include "xtrace.h"

#if !defined(XT_OFF_SKB_DEV) || !defined(XT_SKB_CONSUMED)
#error "compile through the agent (xtrace_agent.xdp.events): it passes the running kernel's offsets"
#endif
#ifndef XT_DROP_TABLE_SIZE
#define XT_DROP_TABLE_SIZE 16384
#endif
#ifndef XT_TCP_TABLE_SIZE
#define XT_TCP_TABLE_SIZE 16384
#endif
#ifndef XT_RTT_SLOTS
#define XT_RTT_SLOTS 32
#endif
_Static_assert((XT_RTT_SLOTS & (XT_RTT_SLOTS - 1)) == 0, "XT_RTT_SLOTS: a power of two (the slot mask)");

#define XT_ROCE_PORT 4791
#define XT_NO_HEADER 0xffff    /* skb->*_header when unset (typeof(skb->mac_header))~0U */
#define AF_INET_ 2
#define AF_INET6_ 10
#define IPPROTO_SCTP_ 132
#define XT_IPV6_EXT_MAX 4

/* A drop: the flow (or an interface's untracked entry, ip_version 0) and the kernel's reason. */
struct drop_key {
    struct flow_key flow;
    __u32 reason;          /* enum skb_drop_reason, as the kernel passed it */
};

/* Where a drop goes when its table is full: per (ifindex | direction, reason), cumulative. */
struct drop_full_key {
    __u32 ifindex;
    __u32 reason;
};

/* Per flow and CPU: retransmitted segments, and the count and sum of its srtt observations. */
struct tcp_stats {
    __u64 retrans_segs;
    __u64 rtt_count;
    __u64 rtt_sum_us;
};

/* Per watched place (ifindex | direction) and CPU, cumulative: srtt observations in power-of-two
 * slots, slot i holding srtt <= 2^i us (and > 2^(i-1) us); srtt_us is 32 bits, so 32 slots hold
 * every value. Per place, not per flow: the histogram is the interface's, and per-flow slots
 * would cost 256 bytes x CPUs per entry. */
struct rtt_hist {
    __u64 sum_us;
    __u64 slots[XT_RTT_SLOTS];
};


#define KEY_WORD(key, off) (*(__u32 *)((__u8 *)(key) + (off)))

#define XT_LOST_DROPS 0
#define XT_LOST_TCP   1

#ifdef XT_DROPS
BPF_TABLE("percpu_hash", struct drop_key, struct counters, drops_a, XT_DROP_TABLE_SIZE);
BPF_TABLE("percpu_hash", struct drop_key, struct counters, drops_b, XT_DROP_TABLE_SIZE);
BPF_ARRAY_OF_MAPS(drop_tables, "drops_a", 1);
BPF_TABLE("percpu_hash", struct drop_full_key, struct counters, drops_full, 4096);
#endif
#ifdef XT_TCP
BPF_TABLE("percpu_hash", struct flow_key, struct tcp_stats, tcp_a, XT_TCP_TABLE_SIZE);
BPF_TABLE("percpu_hash", struct flow_key, struct tcp_stats, tcp_b, XT_TCP_TABLE_SIZE);
BPF_ARRAY_OF_MAPS(tcp_tables, "tcp_a", 1);
BPF_TABLE("percpu_hash", __u32, struct rtt_hist, rtt_hists, 4096);
#endif
/* ifindex | direction -> inode number of the network namespace it is watched in: looked up
 * by ifindex first, so a drop elsewhere costs one read and one lookup before the program leaves */
BPF_HASH(watched, __u32, __u32, 4096);
BPF_PERCPU_ARRAY(lost, struct counters, 2);

/* ---- reading the kernel's structs ---- */

#define AT(ptr, off) ((const void *)((const char *)(ptr) + (off)))

static __always_inline __u64 rd_ptr(const void *p)
{
    __u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), p);
    return v;
}

static __always_inline __u32 rd32(const void *p)
{
    __u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), p);
    return v;
}

static __always_inline __u16 rd16(const void *p)
{
    __u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), p);
    return v;
}

static __always_inline __u32 netns_of_net(__u64 net)
{
    return net ? rd32(AT(net, XT_OFF_NET_INUM)) : 0;
}

/* The namespace `place` (ifindex | direction) is watched in, or 0 when it is not watched. */
static __always_inline __u32 watched_netns(__u32 place)
{
    __u32 *netns = watched.lookup(&place);
    return netns ? *netns : 0;
}

/* Fields close together in one struct are read with one bpf_probe_read_kernel of the span the
 * agent computed from the BTF (XT_<S>_SPAN_START/LEN, 8-aligned), then picked out by offset. */
#define SPAN_FIELD(span, prefix, off, type) \
    (*(type *)((__u8 *)(span) + (off) - prefix##_SPAN_START))

static __always_inline void count_lost(__u32 which, __u64 bytes)
{
    struct counters *c = lost.lookup(&which);
    if (c) {
        c->packets += 1;
        c->bytes += bytes;
    }
}

/* Adds one to `key` of a per-CPU counters table, creating it; -1 when the table is full. */
static __always_inline int add_counters(void *table, void *key, __u64 bytes)
{
    struct counters *v = bpf_map_lookup_elem(table, key);
    if (!v) {
        struct counters init = {.packets = 1, .bytes = bytes};
        if (bpf_map_update_elem(table, key, &init, BPF_NOEXIST) == 0)
            return 0;
        v = bpf_map_lookup_elem(table, key);   /* inserted by an interrupt on this CPU meanwhile */
        if (!v)
            return -1;
    }
    v->packets += 1;
    v->bytes += bytes;
    return 0;
}

/* ---- the flow of a packet, from its headers (as the traffic program's parser fills it) ---- */

static __always_inline void ports_of(const void *l4, struct flow_key *k)
{
    __u8 h[20] = {};
    if (k->protocol != IPPROTO_TCP && k->protocol != IPPROTO_UDP && k->protocol != IPPROTO_SCTP_)
        return;
    bpf_probe_read_kernel(h, sizeof(h), l4);
    k->src_port = ((__u16)h[0] << 8) | h[1];
    k->dst_port = ((__u16)h[2] << 8) | h[3];
    if (k->protocol == IPPROTO_UDP && k->dst_port == XT_ROCE_PORT) {   /* BTH after the UDP header */
        k->traffic_type = XT_TRAFFIC_ROCE;
        k->rdma_opcode = h[8];
        k->dest_qp = ((__u32)h[13] << 16) | ((__u32)h[14] << 8) | h[15];
    }
}

static __always_inline int key_of_ipv4(const void *nh, struct flow_key *k)
{
    struct iphdr ip;
    if (bpf_probe_read_kernel(&ip, sizeof(ip), nh) || ip.version != 4 || ip.ihl < 5)
        return XT_UNTRACKED_MALFORMED;
    k->src[10] = 0xff;
    k->src[11] = 0xff;
    k->dst[10] = 0xff;
    k->dst[11] = 0xff;
    __builtin_memcpy(&k->src[12], &ip.saddr, 4);
    __builtin_memcpy(&k->dst[12], &ip.daddr, 4);
    k->protocol = ip.protocol;
    k->ip_version = 4;
    if ((ip.frag_off & bpf_htons(0x1fff)) == 0)
        ports_of(AT(nh, ip.ihl * 4), k);
    return 0;
}

static __always_inline int key_of_ipv6(const void *nh, struct flow_key *k)
{
    struct ipv6hdr ip6;
    if (bpf_probe_read_kernel(&ip6, sizeof(ip6), nh) || ip6.version != 6)
        return XT_UNTRACKED_MALFORMED;
    __builtin_memcpy(k->src, &ip6.saddr, 16);
    __builtin_memcpy(k->dst, &ip6.daddr, 16);
    k->ip_version = 6;
    const char *pos = (const char *)nh + sizeof(ip6);
    __u8 next = ip6.nexthdr, first = 1;
#pragma unroll
    for (int i = 0; i < XT_IPV6_EXT_MAX; i++) {
        if (next != 0 && next != 43 && next != 44 && next != 60)   /* hop, routing, fragment, dest */
            break;
        __u8 ext[4] = {};
        bpf_probe_read_kernel(ext, sizeof(ext), pos);
        if (next == 44 && (((__u16)ext[2] << 8 | ext[3]) & 0xfff8))
            first = 0;   /* a non-first fragment has no L4 header */
        pos += next == 44 ? 8 : ((__u32)ext[1] + 1) * 8;
        next = ext[0];
    }
    k->protocol = next;
    if (first)
        ports_of(pos, k);
    return 0;
}

/* len, protocol, network_header, mac_header, head, data of an skb: one read (XT_SKB_SPAN_*) */
struct skb_span {
    __u64 w[XT_SKB_SPAN_LEN / 8];
};
#define SKB(span, name, type) SPAN_FIELD(span, XT_SKB, XT_OFF_SKB_##name, type)

/* Fills k's address and port words from the packet's network header; 0, or the untracked reason. */
static __always_inline int key_of_skb(const struct skb_span *sp, struct flow_key *k)
{
    __u16 nh = SKB(sp, NETWORK_HEADER, __u16);
    __u16 proto = SKB(sp, PROTOCOL, __u16);
    __u64 head = SKB(sp, HEAD, __u64);
    if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
        return XT_UNTRACKED_NON_IP;
    if (!head || nh == XT_NO_HEADER)
        return XT_UNTRACKED_MALFORMED;
    const void *ip = AT(head, nh);
    return proto == bpf_htons(ETH_P_IP) ? key_of_ipv4(ip, k) : key_of_ipv6(ip, k);
}

/* ---- drops ---- */

#ifdef XT_DROPS
/* The packet's length from its link-layer header when it has one (as the traffic program
 * counts frames), else from its network header. */
static __always_inline __u64 frame_bytes(const struct skb_span *sp)
{
    __u64 len = SKB(sp, LEN, __u32);
    __u64 data = SKB(sp, DATA, __u64);
    __u64 head = SKB(sp, HEAD, __u64);
    __u16 mac = SKB(sp, MAC_HEADER, __u16);
    if (mac != XT_NO_HEADER && head + mac < data && data - (head + mac) < 256)
        len += data - (head + mac);
    return len;
}

/* The watched (ifindex | direction) a dropped packet belongs to, or 0: received on skb_iif, or
 * sent through skb->dev; in the namespace of that device (or of the socket, once the stack has
 * let go of the device). */
static __always_inline __u32 drop_place(const void *skb, __u64 rx_sk)
{
    __u32 iif = rd32(AT(skb, XT_OFF_SKB_IIF));
    __u64 dev = 0;
    __u32 place = iif;
    if (!iif) {
        dev = rd_ptr(AT(skb, XT_OFF_SKB_DEV));
        if (!dev)
            return 0;
        place = rd32(AT(dev, XT_OFF_DEV_IFINDEX)) | XT_EGRESS;
    }
    __u32 want = watched_netns(place);
    if (!want)
        return 0;   /* the common case: a drop on an interface nobody watches */
    if (iif)
        dev = rd_ptr(AT(skb, XT_OFF_SKB_DEV));
    __u64 net = 0;
    if (dev) {
        net = rd_ptr(AT(dev, XT_OFF_DEV_ND_NET));
    } else {
        __u64 sk = rd_ptr(AT(skb, XT_OFF_SKB_SK));
        if (!sk)
            sk = rx_sk;
        if (sk)
            net = rd_ptr(AT(sk, XT_OFF_SK_NET));
    }
    return netns_of_net(net) == want ? place : 0;
}

int xtrace_drop(struct bpf_raw_tracepoint_args *ctx)
{
    const void *skb = (const void *)ctx->args[0];
    __u32 reason = (__u32)ctx->args[2];
    if (reason == XT_SKB_CONSUMED || reason == XT_SKB_NOT_DROPPED_YET)
        return 0;
    __u32 place = drop_place(skb, XT_KFREE_SKB_HAS_RX_SK ? ctx->args[3] : 0);
    if (!place)
        return 0;
    struct skb_span sp;
    if (bpf_probe_read_kernel(&sp, sizeof(sp), AT(skb, XT_SKB_SPAN_START)))
        __builtin_memset(&sp, 0, sizeof(sp));
    __u64 bytes = frame_bytes(&sp);
    struct drop_key key;
    __builtin_memset(&key, 0, sizeof(key));
    key.flow.ifindex = place;
    key.reason = reason;
    int untracked = key_of_skb(&sp, &key.flow);
    if (untracked) {   /* an untracked entry: ip_version 0, the reason in protocol (xtrace.h) */
        __builtin_memset(&key.flow, 0, sizeof(key.flow));
        key.flow.ifindex = place;
        key.flow.protocol = untracked;
    }
    __u32 zero = 0;
    void *table = drop_tables.lookup(&zero);
    if (table && add_counters(table, &key, bytes) == 0)
        return 0;
    struct drop_full_key full = {.ifindex = place, .reason = reason};
    struct counters init = {}, *c = drops_full.lookup_or_try_init(&full, &init);
    if (c) {
        c->packets += 1;
        c->bytes += bytes;
    } else {
        count_lost(XT_LOST_DROPS, bytes);
    }
    return 0;
}
#endif

/* ---- TCP ---- */

#ifdef XT_TCP
/* The socket's flow as the traffic flows name it: (local -> remote) on the send side of its
 * route's device when that is watched, else (remote -> local) on the receive side; 0 if neither. */
/* family, addresses, ports, bound device and namespace of a socket: one read (XT_SK_SPAN_*) */
struct sk_span {
    __u64 w[XT_SK_SPAN_LEN / 8];
};
#define SK(span, name, type) SPAN_FIELD(span, XT_SK, XT_OFF_SK_##name, type)

static __always_inline int key_of_sock(const void *sk, __u32 fallback_ifindex, struct flow_key *k)
{
    struct sk_span sp;
    if (bpf_probe_read_kernel(&sp, sizeof(sp), AT(sk, XT_SK_SPAN_START)))
        return -1;
    __u32 ifindex = 0;
    __u64 dst = rd_ptr(AT(sk, XT_OFF_SK_DST_CACHE));
    if (dst) {
        __u64 dev = rd_ptr(AT(dst, XT_OFF_DST_DEV));
        if (dev)
            ifindex = rd32(AT(dev, XT_OFF_DEV_IFINDEX));
    }
    if (!ifindex)
        ifindex = SK(&sp, BOUND_DEV_IF, __u32);
    if (!ifindex)
        ifindex = fallback_ifindex;
    if (!ifindex)
        return -1;
    __u32 place = ifindex | XT_EGRESS;
    __u32 want = watched_netns(place);
    int outgoing = want != 0;
    if (!want) {
        place = ifindex;
        want = watched_netns(place);
        if (!want)
            return -1;
    }
    if (netns_of_net(SK(&sp, NET, __u64)) != want)
        return -1;
    /* the key's source is the local end on the send side, the remote end on the receive side */
    __u16 family = SK(&sp, FAMILY, __u16);
    if (family == AF_INET6_) {
#pragma unroll
        for (int i = 0; i < 4; i++) {   /* values picked, not pointers: the verifier forbids pointer tricks */
            __u32 local = SPAN_FIELD(&sp, XT_SK, XT_OFF_SK_V6_RCV_SADDR + 4 * i, __u32);
            __u32 remote = SPAN_FIELD(&sp, XT_SK, XT_OFF_SK_V6_DADDR + 4 * i, __u32);
            KEY_WORD(k, offsetof(struct flow_key, src) + 4 * i) = outgoing ? local : remote;
            KEY_WORD(k, offsetof(struct flow_key, dst) + 4 * i) = outgoing ? remote : local;
        }
        /* an IPv6 socket speaking IPv4 holds ::ffff:a.b.c.d, which is how the key stores IPv4 */
        __u32 *w = (__u32 *)k->src;
        k->ip_version = (w[0] || w[1] || w[2] != bpf_htonl(0xffff)) ? 6 : 4;
    } else if (family == AF_INET_) {
        __u32 local = SK(&sp, RCV_SADDR, __u32), remote = SK(&sp, DADDR, __u32);
        k->src[10] = k->src[11] = k->dst[10] = k->dst[11] = 0xff;
        KEY_WORD(k, offsetof(struct flow_key, src) + 12) = outgoing ? local : remote;
        KEY_WORD(k, offsetof(struct flow_key, dst) + 12) = outgoing ? remote : local;
        k->ip_version = 4;
    } else {
        return -1;
    }
    __u16 lport = SK(&sp, NUM, __u16);                    /* host order */
    __u16 rport = bpf_ntohs(SK(&sp, DPORT, __u16));       /* network order */
    k->ifindex = place;
    k->protocol = IPPROTO_TCP;
    k->traffic_type = XT_TRAFFIC_ETHERNET;
    k->src_port = outgoing ? lport : rport;
    k->dst_port = outgoing ? rport : lport;
    return 0;
}

/* The socket's entry in the current table, created at 0, or its interface's untracked entry
 * (the agent inserts it for every watched place) when the table is full; NULL if neither. */
static __always_inline struct tcp_stats *tcp_entry(struct flow_key *k)
{
    __u32 zero = 0;
    void *table = tcp_tables.lookup(&zero);
    if (!table)
        return 0;
    struct tcp_stats *s = bpf_map_lookup_elem(table, k);
    if (s)
        return s;
    struct tcp_stats init;
    __builtin_memset(&init, 0, sizeof(init));
    bpf_map_update_elem(table, k, &init, BPF_NOEXIST);
    s = bpf_map_lookup_elem(table, k);
    if (s)
        return s;
    __u32 place = k->ifindex;
    __builtin_memset(k, 0, sizeof(*k));
    k->ifindex = place;
    k->protocol = XT_UNTRACKED_TABLE_FULL;
    return bpf_map_lookup_elem(table, k);
}

int xtrace_tcp_retrans(struct bpf_raw_tracepoint_args *ctx)
{
    const void *sk = (const void *)ctx->args[0];
    const void *skb = (const void *)ctx->args[1];
    /* only retransmits that left (err 0): those are the kernel's TcpRetransSegs; the others
     * returned before it counted them (busy in the queue, no memory) */
    if (XT_TCP_RETRANS_HAS_ERR && (int)ctx->args[2] != 0)
        return 0;
    struct flow_key k;
    __builtin_memset(&k, 0, sizeof(k));
    if (key_of_sock(sk, 0, &k))
        return 0;
    __u64 segs = rd16(AT(skb, XT_OFF_SKB_CB + XT_OFF_TCP_CB_GSO_SEGS));
    struct tcp_stats *s = tcp_entry(&k);
    if (!s) {
        count_lost(XT_LOST_TCP, segs);
        return 0;
    }
    s->retrans_segs += segs ? segs : 1;
    return 0;
}

int xtrace_tcp_probe(struct bpf_raw_tracepoint_args *ctx)
{
    const void *sk = (const void *)ctx->args[0];
    const void *skb = (const void *)ctx->args[1];
    __u32 srtt8 = rd32(AT(sk, XT_OFF_TCP_SRTT_US));   /* srtt << 3, in microseconds */
    if (!srtt8)
        return 0;   /* no RTT sample yet */
    struct flow_key k;
    __builtin_memset(&k, 0, sizeof(k));
    if (key_of_sock(sk, skb ? rd32(AT(skb, XT_OFF_SKB_IIF)) : 0, &k))
        return 0;
    __u32 place = k.ifindex;   /* tcp_entry() may turn k into the place's untracked key */
    struct tcp_stats *s = tcp_entry(&k);
    struct rtt_hist init = {}, *h = rtt_hists.lookup_or_try_init(&place, &init);
    if (!s || !h) {
        count_lost(XT_LOST_TCP, 0);
        return 0;
    }
    __u32 us = srtt8 >> 3;
    /* slot: the smallest i with us <= 2^i (a binary search over the shift) */
    __u32 slot = 0, v = us > 1 ? us - 1 : 0;
    if (v >> 16) { slot += 16; v >>= 16; }
    if (v >> 8) { slot += 8; v >>= 8; }
    if (v >> 4) { slot += 4; v >>= 4; }
    if (v >> 2) { slot += 2; v >>= 2; }
    if (v >> 1) { slot += 1; v >>= 1; }
    slot += v;
    /* srtt_us is 32 bits, so slot <= 31 already; the mask, after a barrier the compiler cannot
     * see through, is the bound the verifier can see */
    asm volatile("" : "+r"(slot));
    slot &= XT_RTT_SLOTS - 1;
    s->rtt_count += 1;
    s->rtt_sum_us += us;
    h->sum_us += us;
    h->slots[slot] += 1;
    return 0;
}
#endif
