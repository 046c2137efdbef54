/* XTrace's packet counter: counts every packet exactly once, in its flow or in its interface's
 * untracked entry, and never drops or changes anything.
 *
 * Four entry points share all maps and the parser: XDP for what an interface receives
 * (xtrace_eth on Ethernet links, xtrace_ipoib on IPoIB links) and TC (sched_cls, attached with
 * tcx or the clsact egress hook) for what it sends (xtrace_eth_tx, xtrace_ipoib_tx). Their names
 * start with "xtrace_": that is how the agent recognises a program left attached by a crashed
 * agent (and how it recognises another tool's program, which it never replaces).
 *
 * Compile-time constants (the agent passes them with -D):
 *   XT_FLOW_TABLE_SIZE   entries of each of the two flow tables
 *   XT_SAMPLING          1-in-N sampling of the flow table (1 = off: the sampler compiles out)
 *   XT_TRAFFIC_*, XT_UNTRACKED_*  the numbering of traffic types and untracked reasons
 *
 * Parsing is cursor style: each parse_<hdr>() checks its header against data_end, advances the
 * cursor and reports XT_OK, XT_MALFORMED (cut short or invalid) or XT_NON_IP. The program has a
 * single exit, and it returns XDP_PASS (receive) or TC_ACT_UNSPEC (send) whatever happened:
 * TC_ACT_UNSPEC lets the next program run, in tcx and in a cls_bpf chain alike (TC_ACT_OK would
 * end a cls_bpf chain, so another tool's filter after ours would never see the packet).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

#include "xtrace.h"

#ifndef XT_FLOW_TABLE_SIZE
#define XT_FLOW_TABLE_SIZE 65536
#endif
#ifndef XT_SAMPLING
#define XT_SAMPLING 1
#endif

#define XT_VLAN_MAX      2    /* 802.1Q / 802.1ad tags followed (QinQ) */
#define XT_IPV6_EXT_MAX  4    /* IPv6 extension headers skipped before giving up on ports */
#define XT_ROCE_PORT     4791 /* RoCEv2 UDP destination port (IANA) */
#define XT_BTH_LEN       12   /* InfiniBand Base Transport Header */
#define XT_IPOIB_HLEN    24   /* generic XDP on IPoIB: 20-byte pseudo header + 4-byte encap header */

#define ETH_P_8021AD_ 0x88A8
#define ETH_P_8021Q_  0x8100
#define IPPROTO_SCTP_ 132
#define IPPROTO_ICMPV6_ 58
#define NEXTHDR_HOP      0
#define NEXTHDR_ROUTING  43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST     60

enum xt_parse { XT_OK = 0, XT_MALFORMED = 1, XT_NON_IP = 2 };

/* ---- maps: the agent reads them; flow tables are per-CPU, so counting needs no atomics ---- */

/* Two flow tables. The program counts into the one that `tables` holds; each interval the agent
 * puts the other (empty) one there, and the kernel's map-in-map update returns only once every
 * program run that could still hold the old table has finished (an RCU grace period). The agent
 * then reads and empties the old table with no writer left: a packet is in exactly one drain.
 *
 * Not LRU: a full table refuses a new flow instead of evicting one with its counts, and the
 * packet goes to its interface's `table_full` entry (which the agent inserts up front for every
 * interface it attaches to, so that entry always exists). Every packet lands in exactly one
 * entry, so a table's entries for an interface add up to what the interface received.
 * Kernel memory per entry is about 100 B (element, 48 B key) + 16 B x possible CPUs of per-CPU
 * values, twice: with 65536 entries, ~17 MiB at 2 CPUs, ~150 MiB at 64 CPUs (memcg-accounted,
 * preallocated, no RLIMIT_MEMLOCK since 5.11). */
BPF_TABLE("percpu_hash", struct flow_key, struct counters, flows_a, XT_FLOW_TABLE_SIZE);
BPF_TABLE("percpu_hash", struct flow_key, struct counters, flows_b, XT_FLOW_TABLE_SIZE);
BPF_ARRAY_OF_MAPS(tables, "flows_a", 1);

/* The owner record and the unattributed counts (struct xt_state, xtrace.h). */
BPF_ARRAY(state, struct xt_state, 2);

/* ---- parsing ---- */

/* The flow key is written as whole aligned 32-bit words, each exactly once: the hash function
 * reads it as 32-bit words, and a word assembled from several narrower stores cannot be
 * store-forwarded (a stall per word: IPv4 keys built field by field cost 6 ns more per packet). */
#define KEY_WORD(key, off) (*(__u32 *)((__u8 *)(key) + (off)))
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define PACK16(first, second) ((__u32)(first) | ((__u32)(second) << 16))
#define PACK8(a, b, c, d) ((__u32)(a) | ((__u32)(b) << 8) | ((__u32)(c) << 16) | ((__u32)(d) << 24))
#else
#define PACK16(first, second) (((__u32)(first) << 16) | (__u32)(second))
#define PACK8(a, b, c, d) (((__u32)(a) << 24) | ((__u32)(b) << 16) | ((__u32)(c) << 8) | (__u32)(d))
#endif

/* The word stores above rely on this layout: every word whole, aligned, with no padding. */
#define KEY_FIELD_AT(field, off) _Static_assert(offsetof(struct flow_key, field) == (off), \
                                                "struct flow_key: " #field " moved: fix the word stores")
KEY_FIELD_AT(ifindex, 0);
KEY_FIELD_AT(src, 4);
KEY_FIELD_AT(dst, 20);
KEY_FIELD_AT(src_port, 36);     /* PACK16(src_port, dst_port) is one word */
KEY_FIELD_AT(dst_port, 38);
KEY_FIELD_AT(protocol, 40);     /* PACK8(protocol, traffic_type, rdma_opcode, ip_version) is one word */
KEY_FIELD_AT(traffic_type, 41);
KEY_FIELD_AT(rdma_opcode, 42);
KEY_FIELD_AT(ip_version, 43);
KEY_FIELD_AT(dest_qp, 44);
_Static_assert(sizeof(struct flow_key) == 48, "struct flow_key has padding: the hash would read stale bytes");
_Static_assert(sizeof(struct counters) == 16, "struct counters: the agent reads two 8-byte words");

/* What the parsers found besides the addresses (kept in registers, stored into the key at the end). */
struct parsed {
    __u32 ports;      /* PACK16(src_port, dst_port), host order; 0 when there are none */
    __u32 dest_qp;
    __u8 protocol;
    __u8 traffic_type;
    __u8 rdma_opcode;
    __u8 ip_version;
    __u8 ports_ok;    /* 0 for non-first fragments: their payload has no L4 header */
};

struct cursor {
    void *pos;
    void *end;
};

struct vlan_hdr_ {
    __be16 tci;
    __be16 proto;
};

static __always_inline int parse_eth(struct cursor *c, __u16 *proto)
{
    struct ethhdr *eth = c->pos;
    if ((void *)(eth + 1) > c->end)
        return XT_MALFORMED;
    c->pos = eth + 1;
    *proto = eth->h_proto;
    return XT_OK;
}

/* Up to XT_VLAN_MAX tags of either TPID, outer first; *proto ends as the inner ethertype. */
static __always_inline int parse_vlans(struct cursor *c, __u16 *proto)
{
#pragma unroll
    for (int i = 0; i < XT_VLAN_MAX; i++) {
        if (*proto != bpf_htons(ETH_P_8021Q_) && *proto != bpf_htons(ETH_P_8021AD_))
            break;
        struct vlan_hdr_ *vh = c->pos;
        if ((void *)(vh + 1) > c->end)
            return XT_MALFORMED;
        c->pos = vh + 1;
        *proto = vh->proto;
    }
    return XT_OK;
}

/* IPoIB as generic XDP sees it: pseudo header (hardware address), then {ethertype, reserved}. */
static __always_inline int parse_ipoib(struct cursor *c, __u16 *proto)
{
    __u8 *h = c->pos;
    if ((void *)(h + XT_IPOIB_HLEN) > c->end)
        return XT_MALFORMED;
    *proto = *(__u16 *)(h + 20);
    c->pos = h + XT_IPOIB_HLEN;
    return XT_OK;
}

static __always_inline int parse_ipv4(struct cursor *c, struct flow_key *key, struct parsed *p)
{
    struct iphdr *ip = c->pos;
    if ((void *)(ip + 1) > c->end)
        return XT_MALFORMED;
    __u32 hlen = ip->ihl * 4;
    if (ip->version != 4 || hlen < sizeof(*ip))
        return XT_MALFORMED;
    if (c->pos + hlen > c->end)   /* options cut short */
        return XT_MALFORMED;
    /* IPv4-mapped IPv6: ::ffff:a.b.c.d */
    KEY_WORD(key, offsetof(struct flow_key, src)) = 0;
    KEY_WORD(key, offsetof(struct flow_key, src) + 4) = 0;
    KEY_WORD(key, offsetof(struct flow_key, src) + 8) = bpf_htonl(0xffff);
    KEY_WORD(key, offsetof(struct flow_key, src) + 12) = ip->saddr;
    KEY_WORD(key, offsetof(struct flow_key, dst)) = 0;
    KEY_WORD(key, offsetof(struct flow_key, dst) + 4) = 0;
    KEY_WORD(key, offsetof(struct flow_key, dst) + 8) = bpf_htonl(0xffff);
    KEY_WORD(key, offsetof(struct flow_key, dst) + 12) = ip->daddr;
    p->protocol = ip->protocol;
    p->ip_version = 4;
    p->ports_ok = (ip->frag_off & bpf_htons(0x1fff)) == 0;
    c->pos += hlen;
    return XT_OK;
}

static __always_inline int parse_ipv6(struct cursor *c, struct flow_key *key, struct parsed *p)
{
    struct ipv6hdr *ip6 = c->pos;
    if ((void *)(ip6 + 1) > c->end)
        return XT_MALFORMED;
    if (ip6->version != 6)
        return XT_MALFORMED;
    __u32 *s = (__u32 *)&ip6->saddr, *d = (__u32 *)&ip6->daddr;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        KEY_WORD(key, offsetof(struct flow_key, src) + 4 * i) = s[i];
        KEY_WORD(key, offsetof(struct flow_key, dst) + 4 * i) = d[i];
    }
    p->ip_version = 6;
    c->pos = ip6 + 1;
    __u8 next = ip6->nexthdr;

#pragma unroll
    for (int i = 0; i < XT_IPV6_EXT_MAX; i++) {
        if (next != NEXTHDR_HOP && next != NEXTHDR_ROUTING && next != NEXTHDR_DEST &&
            next != NEXTHDR_FRAGMENT)
            break;
        __u8 *ext = c->pos;
        if ((void *)(ext + 8) > c->end)
            return XT_MALFORMED;
        __u32 len;
        if (next == NEXTHDR_FRAGMENT) {
            len = 8;
            /* fragment offset: the upper 13 bits of bytes 2..3 */
            if (*(__be16 *)(ext + 2) & bpf_htons(0xfff8))
                p->ports_ok = 0;
        } else {
            len = ((__u32)ext[1] + 1) * 8;
        }
        next = ext[0];
        if (c->pos + len > c->end)
            return XT_MALFORMED;
        c->pos += len;
    }
    p->protocol = next;
    return XT_OK;
}

/* Ports for TCP/UDP/SCTP (the first 4 bytes of all three), minimum header lengths for all the
 * protocols we know, and the BTH of RoCEv2 on Ethernet links. */
static __always_inline int parse_l4(struct cursor *c, struct parsed *p, const int ethernet)
{
    __u8 *l4 = c->pos;
    __u32 need;
    switch (p->protocol) {
    case IPPROTO_TCP:
        need = 20;
        break;
    case IPPROTO_UDP:
        need = 8;
        break;
    case IPPROTO_SCTP_:
        need = 12;
        break;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6_:
        need = 4;
        break;
    default:
        return XT_OK;
    }
    if ((void *)(l4 + need) > c->end)
        return XT_MALFORMED;
    if (need == 4)   /* ICMP: no ports */
        return XT_OK;
    __u16 dport = bpf_ntohs(*(__be16 *)(l4 + 2));
    p->ports = PACK16(bpf_ntohs(*(__be16 *)l4), dport);
    if (ethernet && p->protocol == IPPROTO_UDP && dport == XT_ROCE_PORT) {
        __u8 *bth = l4 + 8;
        if ((void *)(bth + XT_BTH_LEN) > c->end)
            return XT_MALFORMED;
        p->traffic_type = XT_TRAFFIC_ROCE;
        p->rdma_opcode = bth[0];
        p->dest_qp = ((__u32)bth[5] << 16) | ((__u32)bth[6] << 8) | bth[7];
    }
    return XT_OK;
}

/* Fills the whole key (every word) or returns why it could not. */
static __always_inline int parse_frame(struct cursor *c, struct flow_key *key, const int ipoib)
{
    struct parsed p = {.traffic_type = ipoib ? XT_TRAFFIC_INFINIBAND : XT_TRAFFIC_ETHERNET, .ports_ok = 1};
    __u16 proto;
    int r;

    if (ipoib) {
        r = parse_ipoib(c, &proto);
    } else {
        r = parse_eth(c, &proto);
        if (r == XT_OK)
            r = parse_vlans(c, &proto);
    }
    if (r != XT_OK)
        return r;
    if (proto == bpf_htons(ETH_P_IP))
        r = parse_ipv4(c, key, &p);
    else if (proto == bpf_htons(ETH_P_IPV6))
        r = parse_ipv6(c, key, &p);
    else
        return XT_NON_IP;
    if (r == XT_OK && p.ports_ok)
        r = parse_l4(c, &p, !ipoib);
    if (r != XT_OK)
        return r;
    KEY_WORD(key, offsetof(struct flow_key, src_port)) = p.ports;
    KEY_WORD(key, offsetof(struct flow_key, protocol)) =
        PACK8(p.protocol, p.traffic_type, p.rdma_opcode, p.ip_version);
    key->dest_qp = p.dest_qp;
    return XT_OK;
}

/* ---- counting ---- */

/* Packets that fit under no interface: no table installed (only between load and the agent's
 * first swap), or a full table with no entry for this interface (an interface the agent did not
 * attach to, e.g. BPF_PROG_TEST_RUN). Rare, so a shared counter with atomic adds is fine. */
static __always_inline void count_unattributed(__u64 bytes)
{
    __u32 idx = XT_STATE_UNATTRIBUTED;
    struct xt_state *s = state.lookup(&idx);
    if (s) {
        __sync_fetch_and_add(&s->packets, 1);
        __sync_fetch_and_add(&s->bytes, bytes);
    }
}

/* Adds one packet to the entry `key` of `table`, creating it; -1 when the table is full. */
static __always_inline int count_in(void *table, struct flow_key *key, __u64 bytes)
{
    struct counters *v = bpf_map_lookup_elem(table, key);
    if (v) {
        v->packets += 1;
        v->bytes += bytes;
        return 0;
    }
    struct counters init = {.packets = 1, .bytes = bytes};
    if (bpf_map_update_elem(table, key, &init, BPF_NOEXIST) == 0)
        return 0;
    /* another CPU inserted the same key a moment ago: add to its entry */
    v = bpf_map_lookup_elem(table, key);
    if (v) {
        v->packets += 1;
        v->bytes += bytes;
        return 0;
    }
    return -1;
}

static __always_inline void count_untracked(void *table, __u32 ifindex, __u32 reason, __u64 bytes)
{
    struct flow_key key;
    __builtin_memset(&key, 0, sizeof(key));
    key.ifindex = ifindex;
    key.protocol = reason;
    if (count_in(table, &key, bytes) != 0)
        count_unattributed(bytes);
}

static __always_inline void count_flow(void *table, struct flow_key *key, __u64 bytes)
{
#if XT_SAMPLING > 1
    /* 1 in XT_SAMPLING packets is counted in its flow (the agent scales the counts up); the
     * others only in the interface's `unsampled` entry, so the interface total stays exact */
    if (bpf_get_prandom_u32() % XT_SAMPLING) {
        count_untracked(table, key->ifindex, XT_UNTRACKED_UNSAMPLED, bytes);
        return;
    }
#endif
    if (count_in(table, key, bytes) != 0)
        count_untracked(table, key->ifindex, XT_UNTRACKED_TABLE_FULL, bytes);
}

/* `ifindex` carries XT_EGRESS for what the interface sends (xtrace.h). */
static __always_inline void xtrace(struct cursor *c, __u32 ifindex, __u64 bytes, const int ipoib)
{
    __u32 zero = 0;
    void *table = tables.lookup(&zero);
    if (!table) {
        count_unattributed(bytes);
        return;
    }
    struct flow_key key;   /* parse_frame writes every word of it */

    key.ifindex = ifindex;
    int r = parse_frame(c, &key, ipoib);
    if (r == XT_OK)
        count_flow(table, &key, bytes);
    else
        count_untracked(table, key.ifindex, r == XT_MALFORMED ? XT_UNTRACKED_MALFORMED : XT_UNTRACKED_NON_IP,
                        bytes);
}

/* ---- receive: XDP ---- */

static __always_inline int xtrace_rx(struct xdp_md *ctx, const int ipoib)
{
    struct cursor c = {.pos = (void *)(long)ctx->data, .end = (void *)(long)ctx->data_end};
    xtrace(&c, ctx->ingress_ifindex, c.end - c.pos, ipoib);
    return XDP_PASS;
}

int xtrace_eth(struct xdp_md *ctx)
{
    return xtrace_rx(ctx, 0);
}

int xtrace_ipoib(struct xdp_md *ctx)
{
    return xtrace_rx(ctx, 1);
}

/* ---- send: TC egress (tcx link, or a cls_bpf filter on clsact) ---- */

#define XT_TC_NEXT (-1)   /* TC_ACT_UNSPEC (TCX_NEXT): observe only, the next program decides */

/* The bytes are skb->len, the whole frame as the driver gets it (a GSO packet is one packet of
 * up to 64 KiB, as the interface's tx counters count it); the headers are read from the linear
 * part, where the stack always puts them when it sends. */
static __always_inline int xtrace_tx(struct __sk_buff *skb, const int ipoib)
{
    struct cursor c = {.pos = (void *)(long)skb->data, .end = (void *)(long)skb->data_end};
    xtrace(&c, skb->ifindex | XT_EGRESS, skb->len, ipoib);
    return XT_TC_NEXT;
}

int xtrace_eth_tx(struct __sk_buff *skb)
{
    return xtrace_tx(skb, 0);
}

int xtrace_ipoib_tx(struct __sk_buff *skb)
{
    return xtrace_tx(skb, 1);
}
