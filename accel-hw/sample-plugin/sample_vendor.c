/*
 * sample_vendor: a dpacc vendor plug-in (ABI 1.0, accel-hw/include/dpacc_vendor.h) that
 * behaves like asynchronous hardware: submit() only queues work; an "engine" thread per queue
 * runs it with libcrypto and signals completions on the queue's notify eventfd.
 *
 * Implements AES-CBC (128/192/256), AES-GCM (128/256), SHA-256 and HMAC-SHA-256. It lacks
 * AES-CTR, ChaCha20-Poly1305 and the other hashes on purpose: dpacc routes those to its
 * software driver (per-algorithm fallback).
 *
 * Build: cc -O2 -shared -fPIC -I accel-hw/include -o libsample_vendor.so \
 *            accel-hw/sample-plugin/sample_vendor.c -lcrypto -lpthread
 * (-DSAMPLE_ABI_VERSION=0x20000 builds a variant that claims ABI 2.0, for the loader's tests.)
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "dpacc_vendor.h"

#ifndef SAMPLE_ABI_VERSION
#define SAMPLE_ABI_VERSION DPACC_VENDOR_ABI_VERSION
#endif

struct sess {
    uint32_t kind, algo, direction, digest_len;
    uint32_t key_len;
    uint8_t key[64];
};

struct job {
    struct job *next;
    uint64_t tag;
    struct sess *s;
    uint8_t iv[16];
    uint32_t iv_len;
    uint32_t n_src, n_dst, n_aad, n_digest;
    struct dpacc_sg sg[]; /* src, dst, aad, digest */
};

struct queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job *head, *tail;
    struct dpacc_completion *done; /* ring of `depth` */
    uint32_t done_head, done_count, depth, in_flight;
    int notify_fd, stop;
    pthread_t engine;
};

static int32_t caps(void *ctx, struct dpacc_caps *c)
{
    (void)ctx;
    memset(c, 0, sizeof(*c));
    c->services = (1u << DPACC_SERVICE_CIPHER) | (1u << DPACC_SERVICE_HASH) | (1u << DPACC_SERVICE_MAC) |
                  (1u << DPACC_SERVICE_AEAD);
    c->cipher = 1ull << DPACC_CIPHER_AES_CBC;
    c->hash = 1u << DPACC_HASH_SHA256;
    c->mac = 1ull << DPACC_MAC_HMAC_SHA256;
    c->aead = 1u << DPACC_AEAD_GCM;
    c->max_cipher_key_len = 32;
    c->max_auth_key_len = 64;
    c->max_size = 1u << 20;
    return 0;
}

static uint32_t session_create(void *ctx, const struct dpacc_session_params *p, uint64_t *out)
{
    (void)ctx;
    switch (p->kind) {
    case DPACC_KIND_CIPHER:
        if (p->algo != DPACC_CIPHER_AES_CBC) return DPACC_NOTSUPP;
        if (p->key_len != 16 && p->key_len != 24 && p->key_len != 32) return DPACC_ERR;
        break;
    case DPACC_KIND_AEAD:
        if (p->algo != DPACC_AEAD_GCM) return DPACC_NOTSUPP;
        if (p->key_len != 16 && p->key_len != 32) return DPACC_NOTSUPP;
        if (p->digest_len < 4 || p->digest_len > 16) return DPACC_ERR;
        break;
    case DPACC_KIND_HASH:
        if (p->algo != DPACC_HASH_SHA256) return DPACC_NOTSUPP;
        if (p->digest_len == 0 || p->digest_len > 32) return DPACC_ERR;
        break;
    case DPACC_KIND_MAC:
        if (p->algo != DPACC_MAC_HMAC_SHA256) return DPACC_NOTSUPP;
        if (p->key_len > 64 || p->digest_len == 0 || p->digest_len > 32) return DPACC_ERR;
        break;
    default:
        return DPACC_NOTSUPP;
    }
    struct sess *s = calloc(1, sizeof(*s));
    if (!s) return DPACC_NOSPC;
    s->kind = p->kind;
    s->algo = p->algo;
    s->direction = p->direction;
    s->digest_len = p->digest_len;
    s->key_len = p->key_len;
    if (p->key_len) memcpy(s->key, p->key, p->key_len);
    *out = (uint64_t)(uintptr_t)s;
    return DPACC_OK;
}

static void session_close(void *ctx, uint64_t h)
{
    (void)ctx;
    struct sess *s = (struct sess *)(uintptr_t)h;
    if (!s) return;
    OPENSSL_cleanse(s, sizeof(*s));
    free(s);
}

static uint64_t sg_total(const struct dpacc_sg *sg, uint32_t n)
{
    uint64_t t = 0;
    for (uint32_t i = 0; i < n; i++) t += sg[i].len;
    return t;
}

static void gather(uint8_t *to, const struct dpacc_sg *sg, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        memcpy(to, sg[i].addr, sg[i].len);
        to += sg[i].len;
    }
}

static void scatter(const struct dpacc_sg *sg, uint32_t n, const uint8_t *from, uint64_t len)
{
    for (uint32_t i = 0; i < n && len; i++) {
        uint64_t k = sg[i].len < len ? sg[i].len : len;
        memcpy(sg[i].addr, from, k);
        from += k;
        len -= k;
    }
}

static const EVP_CIPHER *cbc(uint32_t key_len)
{
    return key_len == 16 ? EVP_aes_128_cbc() : key_len == 24 ? EVP_aes_192_cbc() : EVP_aes_256_cbc();
}

/* Runs one job; returns a status. */
static uint32_t run(const struct job *j)
{
    const struct sess *s = j->s;
    const struct dpacc_sg *src = j->sg, *dst = src + j->n_src, *aad = dst + j->n_dst, *dig = aad + j->n_aad;
    uint64_t len = sg_total(src, j->n_src), aad_len = sg_total(aad, j->n_aad);
    uint64_t dst_len = sg_total(dst, j->n_dst), dig_len = sg_total(dig, j->n_digest);
    uint32_t st = DPACC_ERR;
    uint8_t *in = malloc(len + 1), *out = malloc(len + 16), *a = malloc(aad_len + 1);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    if (!in || !out || !a || !c) goto done;
    gather(in, src, j->n_src);
    gather(a, aad, j->n_aad);
    switch (s->kind) {
    case DPACC_KIND_CIPHER:
        if (j->iv_len != 16 || len % 16 || dst_len < len) break;
        if (EVP_CipherInit_ex(c, cbc(s->key_len), NULL, s->key, j->iv, s->direction == DPACC_ENCRYPT) != 1) break;
        EVP_CIPHER_CTX_set_padding(c, 0);
        if (EVP_CipherUpdate(c, out, &n, in, (int)len) != 1 || EVP_CipherFinal_ex(c, out + n, &m) != 1) break;
        scatter(dst, j->n_dst, out, len);
        st = DPACC_OK;
        break;
    case DPACC_KIND_AEAD: {
        int enc = s->direction == DPACC_ENCRYPT;
        const EVP_CIPHER *g = s->key_len == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
        if (j->iv_len != 12 || dst_len < len || dig_len < s->digest_len) break;
        if (EVP_CipherInit_ex(c, g, NULL, NULL, NULL, enc) != 1) break;
        if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1) break;
        if (EVP_CipherInit_ex(c, NULL, NULL, s->key, j->iv, enc) != 1) break;
        if (aad_len && EVP_CipherUpdate(c, NULL, &n, a, (int)aad_len) != 1) break;
        if (EVP_CipherUpdate(c, out, &n, in, (int)len) != 1) break;
        uint8_t tag[16];
        if (enc) {
            if (EVP_CipherFinal_ex(c, out + n, &m) != 1) break;
            if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1) break;
            scatter(dst, j->n_dst, out, len);
            scatter(dig, j->n_digest, tag, s->digest_len);
            st = DPACC_OK;
        } else {
            if (dig_len != s->digest_len) break; /* the tag: exactly digest_len bytes */
            gather(tag, dig, j->n_digest);
            if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, (int)s->digest_len, tag) != 1) break;
            if (EVP_CipherFinal_ex(c, out + n, &m) != 1) { st = DPACC_BADMSG; break; }
            scatter(dst, j->n_dst, out, len); /* plaintext only once the tag verified */
            st = DPACC_OK;
        }
        break;
    }
    case DPACC_KIND_HASH: {
        uint8_t md[32];
        unsigned int mdl = 0;
        if (dig_len < s->digest_len) break;
        if (EVP_Digest(in, len, md, &mdl, EVP_sha256(), NULL) != 1) break;
        scatter(dig, j->n_digest, md, s->digest_len);
        st = DPACC_OK;
        break;
    }
    case DPACC_KIND_MAC: {
        uint8_t md[32];
        unsigned int mdl = 0;
        if (dig_len < s->digest_len) break;
        if (!HMAC(EVP_sha256(), s->key, (int)s->key_len, in, len, md, &mdl)) break;
        scatter(dig, j->n_digest, md, s->digest_len);
        st = DPACC_OK;
        break;
    }
    default:
        st = DPACC_INVSESS;
    }
done:
    if (out) OPENSSL_cleanse(out, len + 16);
    free(in);
    free(out);
    free(a);
    EVP_CIPHER_CTX_free(c);
    return st;
}

static void *engine(void *arg)
{
    struct queue *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->head && !q->stop) pthread_cond_wait(&q->cv, &q->mu);
        if (q->stop && !q->head) break;
        struct job *j = q->head;
        q->head = j->next;
        if (!q->head) q->tail = NULL;
        pthread_mutex_unlock(&q->mu);
        uint32_t st = run(j);
        pthread_mutex_lock(&q->mu);
        uint32_t slot = (q->done_head + q->done_count) % q->depth;
        q->done[slot].tag = j->tag;
        q->done[slot].status = st;
        q->done[slot].reserved0 = 0;
        q->done_count++;
        free(j);
        uint64_t one = 1;
        ssize_t w = write(q->notify_fd, &one, sizeof(one));
        (void)w;
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static int32_t queue_open(void *ctx, uint32_t depth, int32_t notify_fd, void **out)
{
    (void)ctx;
    if (depth == 0) return -EINVAL;
    struct queue *q = calloc(1, sizeof(*q));
    if (!q) return -ENOMEM;
    q->done = calloc(depth, sizeof(*q->done));
    if (!q->done) { free(q); return -ENOMEM; }
    q->depth = depth;
    q->notify_fd = notify_fd;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    if (pthread_create(&q->engine, NULL, engine, q) != 0) {
        free(q->done);
        free(q);
        return -EAGAIN;
    }
    *out = q;
    return 0;
}

static void queue_close(void *qp)
{
    struct queue *q = qp;
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->engine, NULL);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->done);
    free(q);
}

static uint32_t submit(void *qp, const struct dpacc_op *ops, uint32_t n)
{
    struct queue *q = qp;
    uint32_t taken = 0;
    pthread_mutex_lock(&q->mu);
    for (; taken < n && q->in_flight < q->depth; taken++) {
        const struct dpacc_op *o = &ops[taken];
        uint32_t nsg = o->n_src + o->n_dst + o->n_aad + o->n_digest;
        struct job *j = malloc(sizeof(*j) + nsg * sizeof(struct dpacc_sg));
        if (!j) break;
        j->next = NULL;
        j->tag = o->tag;
        j->s = (struct sess *)(uintptr_t)o->session;
        memcpy(j->iv, o->iv, 16);
        j->iv_len = o->iv_len > 16 ? 16 : o->iv_len;
        j->n_src = o->n_src;
        j->n_dst = o->n_dst;
        j->n_aad = o->n_aad;
        j->n_digest = o->n_digest;
        struct dpacc_sg *sg = j->sg;
        memcpy(sg, o->src, o->n_src * sizeof(*sg));
        memcpy(sg + o->n_src, o->dst, o->n_dst * sizeof(*sg));
        memcpy(sg + o->n_src + o->n_dst, o->aad, o->n_aad * sizeof(*sg));
        memcpy(sg + o->n_src + o->n_dst + o->n_aad, o->digest, o->n_digest * sizeof(*sg));
        if (q->tail) q->tail->next = j; else q->head = j;
        q->tail = j;
        q->in_flight++;
    }
    if (taken) pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return taken;
}

static uint32_t poll_done(void *qp, struct dpacc_completion *out, uint32_t max)
{
    struct queue *q = qp;
    uint32_t n = 0;
    pthread_mutex_lock(&q->mu);
    while (n < max && q->done_count) {
        out[n++] = q->done[q->done_head];
        q->done_head = (q->done_head + 1) % q->depth;
        q->done_count--;
        q->in_flight--;
    }
    pthread_mutex_unlock(&q->mu);
    return n;
}

static void fini(void *ctx) { (void)ctx; }

uint32_t dpacc_vendor_abi(void) { return SAMPLE_ABI_VERSION; }

int32_t dpacc_vendor_init(uint32_t loader_abi, struct dpacc_vendor_ops *ops)
{
    if ((loader_abi >> 16) != DPACC_VENDOR_ABI_MAJOR) return -EPROTO;
    if (ops->size < sizeof(*ops)) return -EINVAL;
    memset(ops, 0, sizeof(*ops));
    ops->size = sizeof(*ops);
    ops->abi_version = SAMPLE_ABI_VERSION;
    ops->name = "sample-vendor";
    ops->ctx = NULL;
    ops->capabilities = caps;
    ops->session_create = session_create;
    ops->session_close = session_close;
    ops->queue_open = queue_open;
    ops->queue_close = queue_close;
    ops->submit = submit;
    ops->poll = poll_done;
    ops->fini = fini;
    return 0;
}
