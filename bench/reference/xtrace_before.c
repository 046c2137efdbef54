/* bpf/xtrace.c as of commit facf2dc (LRU flow table, per-interface totals, lookup-and-delete drain),
 * header inlined. For bench/bench_xdp.py only: the per-packet cost reference measured in the same
 * run as the current program. Not used by the agent. */
/* XTrace XDP program: counts every packet per flow and per interface, never drops anything.
 *
 * Two entry points share all maps: xtrace_eth (Ethernet links) and xtrace_ipoib (IPoIB links).
 * Their names start with "xtrace_": that is how the agent recognises a program left attached by a
 * crashed agent (and how it recognises another tool's program, which it never replaces).
 *
 * Compile-time constants (the agent passes them with -D):
 *   XT_FLOW_TABLE_SIZE   entries of the per-flow table
 *   XT_SAMPLING          1-in-N sampling of the flow table (1 = off: the sampler compiles out)
 *   XT_IFACE_SLOTS       ifindexes below this count in a per-CPU array (fast path)
 *   XT_IFACE_TABLE_SIZE  entries of the per-interface totals for larger ifindexes
 *
 * Parsing is cursor style: each parse_<hdr>() checks its header against data_end, advances the
 * cursor and reports XT_OK, XT_MALFORMED (cut short or invalid) or XT_NON_IP. The program has a
 * single exit, and it returns XDP_PASS whatever happened.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>

/* Structures shared by the XDP program (bpf/xtrace.c) and the agent.
 *
 * This header holds ONLY what both sides read. The agent never re-declares these layouts:
 * the compile step reports each map's key/value layout (field names, offsets, sizes) as BCC
 * sees it, and the agent builds its decoders from that report.
 */
#ifndef XTRACE_H
#define XTRACE_H

/* traffic_type values (label traffic_type) */
#define XT_TRAFFIC_ETHERNET   0
#define XT_TRAFFIC_ROCE       1   /* RoCEv2: UDP destination port 4791 with a BTH */
#define XT_TRAFFIC_INFINIBAND 2   /* IPoIB link */

/* One flow, per ingress interface. Addresses are 16 bytes; IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d) and ip_version says which text form to print. Ports are host order and
 * 0 for protocols without ports and for non-first fragments. */
struct flow_key {
    __u32 ifindex;
    __u8  src[16];
    __u8  dst[16];
    __u16 src_port;
    __u16 dst_port;
    __u8  protocol;       /* IANA protocol number (final, after IPv6 extension headers) */
    __u8  traffic_type;   /* XT_TRAFFIC_* */
    __u8  rdma_opcode;    /* BTH opcode, RoCEv2 only */
    __u8  ip_version;     /* 4 or 6 */
    __u32 dest_qp;        /* BTH destination QP (24 bits), RoCEv2 only */
};

/* Per-CPU value of a flow and of an interface total. */
struct counters {
    __u64 packets;
    __u64 bytes;
};

/* Indexes of the per-CPU `stats` array: what the program could not track. */
enum xt_stat {
    XT_STAT_MALFORMED = 0,   /* a header was cut short or invalid (bad IHL, bad version...) */
    XT_STAT_NON_IP,          /* parsed fine but not IPv4/IPv6 (ARP, LLDP...): interface totals only */
    XT_STAT_TABLE_FULL,      /* flow insert failed: packets stay in interface totals only */
    XT_STAT_FLOW_INSERTS,    /* new flows inserted; inserts - drained = LRU evictions */
    XT_STAT_SAMPLED,         /* packets that went through the 1-in-N sampler into the flow table */
    XT_STAT_MAX,
};

#endif

#ifndef XT_FLOW_TABLE_SIZE
#define XT_FLOW_TABLE_SIZE 65536
#endif
#ifndef XT_SAMPLING
#define XT_SAMPLING 1
#endif
#ifndef XT_IFACE_SLOTS
#define XT_IFACE_SLOTS 1024
#endif
#ifndef XT_IFACE_TABLE_SIZE
#define XT_IFACE_TABLE_SIZE 1024
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

/* ---- maps: the agent reads them; every one is per-CPU, so the program never needs atomics ---- */

/* Per-flow counters since the last drain (the agent reads and deletes them in batches).
 * LRU: a full table evicts its least recently used flow instead of refusing new ones; the agent
 * derives evictions as flow_inserts - flows drained. Kernel memory per entry is about
 * 100 B (element, 48 B key, LRU node) + 16 B x possible CPUs of per-CPU values: with 65536
 * entries, ~8 MiB at 2 CPUs, ~74 MiB at 64 CPUs (memcg-accounted, no RLIMIT_MEMLOCK since 5.11). */
BPF_TABLE("lru_percpu_hash", struct flow_key, struct counters, flows, XT_FLOW_TABLE_SIZE);

/* Per ingress ifindex, every packet (parsable or not), cumulative: the agent computes deltas, so
 * nothing is ever lost between read and reset. Host NICs have small ifindexes: those index a
 * per-CPU array, whose lookup the verifier inlines (a hash lookup here cost 9 ns per packet);
 * larger ones go to an LRU hash (LRU only so that a long-gone ifindex makes room).
 * Memory: 16 B x XT_IFACE_SLOTS x CPUs (1024 slots: 16 KiB per CPU). */
BPF_PERCPU_ARRAY(iface_slots, struct counters, XT_IFACE_SLOTS);
BPF_TABLE("lru_percpu_hash", __u32, struct counters, ifaces, XT_IFACE_TABLE_SIZE);

/* What the program could not track, cumulative, indexed by enum xt_stat (xtrace.h). */
BPF_PERCPU_ARRAY(stats, __u64, XT_STAT_MAX);

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

static __always_inline void stat_inc(__u32 idx)
{
    __u64 *v = stats.lookup(&idx);
    if (v)
        *v += 1;
}

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

static __always_inline void count_flow(struct flow_key *key, __u64 bytes)
{
#if XT_SAMPLING > 1
    if (bpf_get_prandom_u32() % XT_SAMPLING)
        return;
    stat_inc(XT_STAT_SAMPLED);
#endif
    struct counters *v = flows.lookup(key);
    if (v) {
        v->packets += XT_SAMPLING;
        v->bytes += bytes * XT_SAMPLING;
        return;
    }
    struct counters init = {.packets = XT_SAMPLING, .bytes = bytes * XT_SAMPLING};
    if (flows.insert(key, &init) == 0) {
        stat_inc(XT_STAT_FLOW_INSERTS);
        return;
    }
    /* another CPU inserted the same flow a moment ago: add to its entry */
    v = flows.lookup(key);
    if (v) {
        v->packets += XT_SAMPLING;
        v->bytes += bytes * XT_SAMPLING;
        return;
    }
    stat_inc(XT_STAT_TABLE_FULL);
}

static __always_inline void count_iface(__u32 ifindex, __u64 bytes)
{
    struct counters *v;
    if (ifindex < XT_IFACE_SLOTS) {
        v = iface_slots.lookup(&ifindex);
        if (v) {
            v->packets += 1;
            v->bytes += bytes;
        }
        return;
    }
    v = ifaces.lookup(&ifindex);
    if (v) {
        v->packets += 1;
        v->bytes += bytes;
        return;
    }
    struct counters init = {.packets = 1, .bytes = bytes};
    ifaces.update(&ifindex, &init);
}

static __always_inline int xtrace(struct xdp_md *ctx, const int ipoib)
{
    struct cursor c = {.pos = (void *)(long)ctx->data, .end = (void *)(long)ctx->data_end};
    __u64 bytes = c.end - c.pos;
    struct flow_key key;   /* parse_frame writes every word of it */

    key.ifindex = ctx->ingress_ifindex;
    count_iface(key.ifindex, bytes);

    int r = parse_frame(&c, &key, ipoib);
    if (r == XT_OK)
        count_flow(&key, bytes);
    else
        stat_inc(r == XT_MALFORMED ? XT_STAT_MALFORMED : XT_STAT_NON_IP);
    return XDP_PASS;
}

int xtrace_eth(struct xdp_md *ctx)
{
    return xtrace(ctx, 0);
}

int xtrace_ipoib(struct xdp_md *ctx)
{
    return xtrace(ctx, 1);
}
