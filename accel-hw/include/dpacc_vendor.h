/*
 * dpacc vendor plug-in ABI, version 1.0.
 *
 * A vendor driver is a shared object loaded by `dpacc-backend crypto --driver plugin:PATH`.
 * It exports two C symbols:
 *
 *     uint32_t dpacc_vendor_abi(void);
 *         returns DPACC_VENDOR_ABI_VERSION as compiled into the plug-in. The loader refuses a
 *         plug-in whose major version differs from its own, or whose minor version is newer.
 *
 *     int32_t dpacc_vendor_init(uint32_t loader_abi, struct dpacc_vendor_ops *ops);
 *         fills *ops (ops->size is preset by the loader to sizeof(struct dpacc_vendor_ops));
 *         returns 0, or a negative errno-style value on failure.
 *
 * Model (see docs/vendor-drivers.md):
 *   - capabilities() reports what the engine implements, as virtio-crypto bit masks
 *     (bit N of `cipher` = virtio-crypto cipher algorithm N, and so on). The loader sends
 *     everything else to dpacc's software driver.
 *   - Sessions: session_create() gets the algorithm and the key; the plug-in returns an opaque
 *     64-bit handle. session_close() must erase the key material. Chained cipher+MAC sessions
 *     are not part of ABI 1.0 (they run on the software fallback).
 *   - Queues: one per backend worker thread; a queue is never used by two threads at once, so
 *     it needs no lock on the loader's side. submit() takes a batch of operations and returns
 *     how many it accepted (0..n; the rest are offered again later). Every accepted operation
 *     produces exactly one completion, which poll() hands back, in any order. When completions
 *     become available the plug-in writes a non-zero 8-byte value to the queue's `notify_fd`
 *     (an eventfd created by the loader): the "callback" of asynchronous hardware. A plug-in
 *     that completes inside submit() may skip that write.
 *   - Memory: the `ops` array and the dpacc_sg lists it points to are valid only during the
 *     submit() call (copy what you need). The data the segments point to (guest memory, mapped
 *     by the backend) stays valid and untouched by anyone else until the operation's completion
 *     has been returned by poll(). src and dst are either the same memory or disjoint.
 *   - Status codes are virtio-crypto statuses: DPACC_OK, DPACC_ERR, DPACC_BADMSG (only for an
 *     authentication failure), DPACC_NOTSUPP, DPACC_INVSESS, DPACC_NOSPC.
 *   - Threads: capabilities/session_* may be called from any thread, concurrently; submit/poll
 *     of one queue from one thread at a time; the plug-in's own threads may write notify_fd.
 *
 * All structs have fixed layouts (x86-64 / aarch64 LP64); sizes are asserted below.
 */
#ifndef DPACC_VENDOR_H
#define DPACC_VENDOR_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DPACC_VENDOR_ABI_MAJOR 1u
#define DPACC_VENDOR_ABI_MINOR 0u
#define DPACC_VENDOR_ABI_VERSION ((DPACC_VENDOR_ABI_MAJOR << 16) | DPACC_VENDOR_ABI_MINOR)

/* Status codes (virtio-crypto). */
#define DPACC_OK 0u
#define DPACC_ERR 1u
#define DPACC_BADMSG 2u
#define DPACC_NOTSUPP 3u
#define DPACC_INVSESS 4u
#define DPACC_NOSPC 5u

/* Session kinds. */
#define DPACC_KIND_CIPHER 1u
#define DPACC_KIND_HASH 2u
#define DPACC_KIND_MAC 3u
#define DPACC_KIND_AEAD 4u

/* Directions (virtio-crypto op values). */
#define DPACC_ENCRYPT 1u
#define DPACC_DECRYPT 2u

/* Algorithm numbers are virtio-crypto's (virtio 1.2, "Crypto Device"). A few for convenience. */
#define DPACC_CIPHER_AES_CBC 3u
#define DPACC_CIPHER_AES_CTR 4u
#define DPACC_HASH_SHA1 2u
#define DPACC_HASH_SHA256 4u
#define DPACC_HASH_SHA384 5u
#define DPACC_HASH_SHA512 6u
#define DPACC_MAC_HMAC_SHA1 2u
#define DPACC_MAC_HMAC_SHA256 4u
#define DPACC_MAC_HMAC_SHA384 5u
#define DPACC_MAC_HMAC_SHA512 6u
#define DPACC_AEAD_GCM 1u
#define DPACC_AEAD_CHACHA20_POLY1305 3u

/* Service bits of dpacc_caps.services: 1 << service. */
#define DPACC_SERVICE_CIPHER 0u
#define DPACC_SERVICE_HASH 1u
#define DPACC_SERVICE_MAC 2u
#define DPACC_SERVICE_AEAD 3u

struct dpacc_caps {
    uint32_t services;           /* bit per DPACC_SERVICE_* */
    uint32_t hash;               /* bit per hash algorithm */
    uint64_t cipher;             /* bit per cipher algorithm */
    uint64_t mac;                /* bit per MAC algorithm */
    uint32_t aead;               /* bit per AEAD algorithm */
    uint32_t max_cipher_key_len; /* bytes */
    uint32_t max_auth_key_len;   /* bytes */
    uint32_t reserved0;
    uint64_t max_size;           /* largest operation, bytes */
    uint64_t reserved[4];
};

struct dpacc_session_params {
    uint32_t kind;       /* DPACC_KIND_* */
    uint32_t algo;       /* virtio-crypto algorithm number for that kind */
    uint32_t direction;  /* DPACC_ENCRYPT / DPACC_DECRYPT (cipher, AEAD), else 0 */
    uint32_t digest_len; /* hash/MAC output or AEAD tag length, bytes */
    const uint8_t *key;  /* cipher/AEAD key or MAC key; NULL for hashes */
    uint32_t key_len;
    uint32_t reserved0;
    uint64_t reserved[4];
};

struct dpacc_sg {
    uint8_t *addr;
    uint64_t len;
};

/*
 * One operation. Reads and writes by session kind:
 *   cipher: iv, src -> dst (same length)
 *   hash/MAC: src -> digest
 *   AEAD encrypt: iv, aad, src -> dst (ciphertext, src length), digest (tag)
 *   AEAD decrypt: iv, aad, src, digest (tag) -> dst only if the tag verifies, else DPACC_BADMSG
 */
struct dpacc_op {
    uint64_t session; /* handle from session_create */
    uint64_t tag;     /* opaque, returned in the completion */
    uint8_t iv[16];
    uint32_t iv_len;
    uint32_t n_src;
    uint32_t n_dst;
    uint32_t n_aad;
    uint32_t n_digest;
    uint32_t reserved0;
    const struct dpacc_sg *src;
    const struct dpacc_sg *dst;
    const struct dpacc_sg *aad;
    const struct dpacc_sg *digest;
};

struct dpacc_completion {
    uint64_t tag;
    uint32_t status; /* DPACC_OK, ... */
    uint32_t reserved0;
};

struct dpacc_vendor_ops {
    uint32_t size;        /* preset by the loader: sizeof(struct dpacc_vendor_ops) */
    uint32_t abi_version; /* set by the plug-in: DPACC_VENDOR_ABI_VERSION */
    const char *name;     /* short driver name, static storage */
    void *ctx;            /* the plug-in's state, passed back to every call */
    int32_t (*capabilities)(void *ctx, struct dpacc_caps *out);
    /* Returns a status; on DPACC_OK, *session holds the new handle. */
    uint32_t (*session_create)(void *ctx, const struct dpacc_session_params *p, uint64_t *session);
    void (*session_close)(void *ctx, uint64_t session);
    /* depth: most operations in flight. Returns 0 or a negative errno. */
    int32_t (*queue_open)(void *ctx, uint32_t depth, int32_t notify_fd, void **queue);
    /* Called with no operation in flight. */
    void (*queue_close)(void *queue);
    uint32_t (*submit)(void *queue, const struct dpacc_op *ops, uint32_t n);
    uint32_t (*poll)(void *queue, struct dpacc_completion *out, uint32_t max);
    /* Called once, after every queue and session is closed. */
    void (*fini)(void *ctx);
    void *reserved[4];
};

uint32_t dpacc_vendor_abi(void);
int32_t dpacc_vendor_init(uint32_t loader_abi, struct dpacc_vendor_ops *ops);

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && UINTPTR_MAX == UINT64_MAX
_Static_assert(sizeof(struct dpacc_caps) == 80, "dpacc_caps layout");
_Static_assert(sizeof(struct dpacc_session_params) == 64, "dpacc_session_params layout");
_Static_assert(sizeof(struct dpacc_sg) == 16, "dpacc_sg layout");
_Static_assert(sizeof(struct dpacc_op) == 88, "dpacc_op layout");
_Static_assert(sizeof(struct dpacc_completion) == 16, "dpacc_completion layout");
_Static_assert(sizeof(struct dpacc_vendor_ops) == 120, "dpacc_vendor_ops layout");
#endif

#ifdef __cplusplus
}
#endif
#endif /* DPACC_VENDOR_H */
