/* What tailsfs's small-file handlers would cost without the interpreter.
 *
 * Makes, per file, the same system calls and cryptographic operations as the Python engine's
 * handlers, in the same order (traced with strace through TailsOperations in-process):
 *   create: LOOKUP of the missing name, CREATE on a spare inode, WRITE of 4 KiB, RELEASE
 *           (GETXATTR security.capability is answered from memory and costs nothing here);
 *   read:   LOOKUP (with its prefetch), OPEN (the header, its key, the audit line, the first
 *           chunk for the kernel's page cache), RELEASE.
 * No FUSE: what a request's round trip adds is measured separately (scripts/handoffs).
 *
 * Build: cc -O2 -o floor scripts/floor-handlers.c -lcrypto   (Debian: gcc, libssl-dev); scripts/floor builds it itself
 * Run:   ./floor DIR [FILES [ROUNDS]]                   (DIR: an empty directory on the disk to measure)
 * Prints one line per round: µs per file for create, for a warm read and, as root, a cold read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define HEADER 4096
#define PAYLOAD 4096
#define PREFIX 28      /* magic, version, tier, codec, chunk size, file id: the header's clear part */
#define WRAPPED_AT 28  /* the wrapped data key: 12 + 32 + 16 bytes */
#define META_AT 90     /* the sealed metadata */
#define META_LEN 40

static unsigned char wrap_key[32], dirmeta_key[32], details_key[32], mac_key[32], siv_key[64], dir_id[16];
static unsigned char chain[32];
static EVP_CIPHER_CTX *wrap_enc, *wrap_dec, *tag_enc, *details_enc;
static EVP_CIPHER *siv;
static int audit_fd, seq;

static void die(const char *what) { perror(what); exit(1); }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static EVP_CIPHER_CTX *gcm(const unsigned char *key, int enc) {
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!c || !EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, NULL, enc)) die("AES-GCM key");
    return c;
}

/* nonce(12) from getrandom ‖ ciphertext ‖ tag(16), as tailsfs seals every box */
static size_t seal(EVP_CIPHER_CTX *c, const unsigned char *in, size_t n, const unsigned char *ad, size_t adn,
                   unsigned char *out) {
    int len;
    if (getrandom(out, 12, 0) != 12) die("getrandom");
    if (!EVP_EncryptInit_ex(c, NULL, NULL, NULL, out)) die("AES-GCM nonce");
    EVP_EncryptUpdate(c, NULL, &len, ad, (int)adn);
    EVP_EncryptUpdate(c, out + 12, &len, in, (int)n);
    EVP_EncryptFinal_ex(c, out + 12 + len, &len);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, out + 12 + n);
    return 12 + n + 16;
}

static void unseal(EVP_CIPHER_CTX *c, const unsigned char *box, size_t n, const unsigned char *ad, size_t adn,
                   unsigned char *out) {
    int len;
    if (!EVP_DecryptInit_ex(c, NULL, NULL, NULL, box)) die("AES-GCM nonce");
    EVP_DecryptUpdate(c, NULL, &len, ad, (int)adn);
    EVP_DecryptUpdate(c, out, &len, box + 12, (int)n);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, (void *)(box + 12 + n));
    if (EVP_DecryptFinal_ex(c, out + len, &len) <= 0) { fputs("floor: a box does not authenticate\n", stderr); exit(1); }
}

static void hmac(const unsigned char *key, const unsigned char *msg, size_t n, unsigned char out[32]) {
    unsigned int len = 32;
    if (!HMAC(EVP_sha256(), key, 32, msg, n, out, &len)) die("HMAC");
}

/* HKDF-SHA256: one extract, two expands: a memory's content and metadata keys */
static void file_keys(const unsigned char data_key[32], unsigned char content[32], unsigned char meta[32]) {
    static const unsigned char no_salt[32];
    unsigned char prk[32], info[32];
    hmac(no_salt, data_key, 32, prk);
    memcpy(info, "tailsfs/v1/content\1", 19); hmac(prk, info, 19, content);
    memcpy(info, "tailsfs/v1/meta\1", 16); hmac(prk, info, 16, meta);
}

/* AES-SIV of the name under the directory's id, base64url: the host name */
static void host_name(const char *name, char *out) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char buf[300];
    int len, tot;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!EVP_EncryptInit_ex2(c, siv, siv_key, NULL, NULL)) die("AES-SIV key");
    EVP_EncryptUpdate(c, NULL, &len, dir_id, sizeof dir_id);
    EVP_EncryptUpdate(c, buf + 16, &len, (const unsigned char *)name, (int)strlen(name));
    tot = len;
    EVP_EncryptFinal_ex(c, buf + 16 + tot, &len);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, buf);
    EVP_CIPHER_CTX_free(c);
    tot += 16;
    size_t o = 0;
    for (int i = 0; i < tot; i += 3) {
        unsigned v = buf[i] << 16 | (i + 1 < tot ? buf[i + 1] << 8 : 0) | (i + 2 < tot ? buf[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        if (i + 1 < tot) out[o++] = b64[v >> 6 & 63];
        if (i + 2 < tot) out[o++] = b64[v & 63];
    }
    out[o] = 0;
}

/* one line of the audit trail: details sealed, MAC chained, key evolved, one append */
static void audit(const char *event, const char *name) {
    char details[256], b64[512], line[1024], hex[65];
    unsigned char box[320], body[640], mac[32], evolve[64];
    int dn = snprintf(details, sizeof details,
                      "{\"memory_id\": \"s1:%s:1796452816.123\", \"tier\": \"persistent\", \"size_bytes\": 4096, \"session\": \"s1\"}", name);
    char ad[16];
    int adn = snprintf(ad, sizeof ad, "%d", ++seq);
    size_t bn = seal(details_enc, (unsigned char *)details, (size_t)dn, (unsigned char *)ad, (size_t)adn, box);
    EVP_EncodeBlock((unsigned char *)b64, box, (int)bn);
    memcpy(body, chain, 32);
    int mn = snprintf((char *)body + 32, sizeof body - 32, "[%d,\"2026-12-05T06:40:16.366773+00:00\",\"%s\",\"%s\"]", seq, event, b64);
    hmac(mac_key, body, 32 + (size_t)mn, mac);
    memcpy(chain, mac, 32);
    memcpy(evolve, "tailsfs/v1/audit-evolve", 23);
    memcpy(evolve + 23, mac_key, 32);
    SHA256(evolve, 55, mac_key);
    for (int j = 0; j < 32; j++) sprintf(hex + 2 * j, "%02x", mac[j]);
    int ln = snprintf(line, sizeof line, "{\"seq\": %d, \"timestamp\": \"2026-12-05T06:40:16.366773+00:00\", "
                      "\"event\": \"%s\", \"details\": \"%s\", \"mac\": \"%s\"}\n", seq, event, b64, hex);
    if (write(audit_fd, line, (size_t)ln) != ln) die("audit append");
}

static void create_one(const char *sess, const char *spare, const char *name, const unsigned char *data) {
    char enc[400], path[4608];
    unsigned char header[HEADER], file_id[16], data_key[32], content_key[32], meta_key[32], meta[META_LEN];
    unsigned char tag[64], box[PAYLOAD + 64];
    struct stat s;
    /* LOOKUP: the name is not there */
    host_name(name, enc);
    snprintf(path, sizeof path, "%s/%s", sess, enc);
    if (lstat(path, &s) == 0 || errno != ENOENT) die("lookup");
    /* CREATE: a spare inode, its owner, times and mode; a header with a new wrapped key; the tag; its name */
    if (lstat(spare, &s)) die("spare");
    int fd = open(spare, O_RDWR | O_NOFOLLOW);
    if (fd < 0) die("open spare");
    fstat(fd, &s);
    if (fchown(fd, 0, 0) || futimens(fd, NULL) || fchmod(fd, 0644)) die("owner, times, mode");
    getrandom(file_id, 16, 0);
    getrandom(data_key, 32, 0);
    memset(header, 0, sizeof header);
    memcpy(header, "TLFS\1\2\0\0\0\0@\0", 12);
    memcpy(header + 12, file_id, 16);
    seal(wrap_enc, data_key, 32, header, PREFIX, header + WRAPPED_AT);
    file_keys(data_key, content_key, meta_key);
    EVP_CIPHER_CTX *content = gcm(content_key, 1), *meta_box = gcm(meta_key, 1);
    memset(meta, 7, sizeof meta);
    seal(meta_box, meta, META_LEN, header, PREFIX, header + META_AT);
    if (pwrite(fd, header, HEADER, 0) != HEADER) die("header");
    seal(tag_enc, file_id, 24, (unsigned char *)"t", 1, tag);
    if (fsetxattr(fd, "user.tailsfs.tag", tag, 52, 0)) die("tag");
    if (link(spare, path) || unlink(spare)) die("link");
    fstat(fd, &s);
    fstat(fd, &s);
    /* WRITE: one sealed chunk */
    memcpy(box, "\0\0\20\0", 4);
    size_t m = seal(content, data, PAYLOAD, file_id, 16, box + 4);
    if (pwrite(fd, box, 4 + m, HEADER) != (ssize_t)(4 + m)) die("chunk");
    /* RELEASE: the header with the size, the kept times, the audit line */
    seal(meta_box, meta, META_LEN, header, PREFIX, header + META_AT);
    if (pwrite(fd, header, HEADER, 0) != HEADER) die("header");
    struct timespec times[2];
    clock_gettime(CLOCK_REALTIME, &times[0]);
    times[1] = times[0];
    futimens(fd, times);
    close(fd);
    EVP_CIPHER_CTX_free(content);
    EVP_CIPHER_CTX_free(meta_box);
    audit("memory_write", name);
}

static void read_one(const char *sess, const char *name, const unsigned char *data) {
    char enc[400], path[4608];
    unsigned char header[HEADER], data_key[32], content_key[32], meta_key[32], meta[META_LEN];
    unsigned char box[PAYLOAD + 64], plain[PAYLOAD];
    struct stat s;
    /* LOOKUP, and the prefetch of the file it finds */
    host_name(name, enc);
    snprintf(path, sizeof path, "%s/%s", sess, enc);
    if (lstat(path, &s)) die("lookup");
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) die("prefetch");
    posix_fadvise(fd, 0, HEADER + 128 * 1024, POSIX_FADV_WILLNEED);
    close(fd);
    /* OPEN: the header and its keys, the size check, the audit line, the first chunk */
    if (lstat(path, &s)) die("open");
    fd = open(path, O_RDWR | O_NOFOLLOW);
    if (fd < 0) die("open");
    posix_fadvise(fd, 0, s.st_size, POSIX_FADV_WILLNEED);
    if (pread(fd, header, HEADER, 0) != HEADER) die("header");
    unseal(wrap_dec, header + WRAPPED_AT, 32, header, PREFIX, data_key);
    file_keys(data_key, content_key, meta_key);
    EVP_CIPHER_CTX *content = gcm(content_key, 0), *meta_box = gcm(meta_key, 0);
    unseal(meta_box, header + META_AT, META_LEN, header, PREFIX, meta);
    fstat(fd, &s);
    audit("memory_read", name);
    if (pread(fd, box, 4 + 12 + PAYLOAD + 16, HEADER) != 4 + 12 + PAYLOAD + 16) die("chunk");
    unseal(content, box + 4, PAYLOAD, header + 12, 16, plain);
    if (memcmp(plain, data, PAYLOAD)) { fputs("floor: wrong bytes\n", stderr); exit(1); }
    EVP_CIPHER_CTX_free(content);
    EVP_CIPHER_CTX_free(meta_box);
    /* RELEASE */
    close(fd);
}

static int drop_caches(void) {
    sync();
    FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
    if (!f) return 0;
    int ok = fputs("3\n", f) >= 0;
    return fclose(f) == 0 && ok;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s DIR [FILES [ROUNDS]]\n", argv[0]); return 2; }
    int n = argc > 2 ? atoi(argv[2]) : 3000, rounds = argc > 3 ? atoi(argv[3]) : 3;
    if (n <= 0 || rounds <= 0) { fputs("floor: FILES and ROUNDS must be positive\n", stderr); return 2; }
    char sess[4096], spares[4096], spare[4200], name[64];
    snprintf(sess, sizeof sess, "%s/session", argv[1]);
    snprintf(spares, sizeof spares, "%s/spare", argv[1]);
    if ((mkdir(sess, 0755) && errno != EEXIST) || (mkdir(spares, 0755) && errno != EEXIST)) die(argv[1]);
    getrandom(wrap_key, sizeof wrap_key, 0);
    getrandom(dirmeta_key, sizeof dirmeta_key, 0);
    getrandom(details_key, sizeof details_key, 0);
    getrandom(mac_key, sizeof mac_key, 0);
    getrandom(siv_key, sizeof siv_key, 0);
    getrandom(dir_id, sizeof dir_id, 0);
    wrap_enc = gcm(wrap_key, 1); wrap_dec = gcm(wrap_key, 0);
    tag_enc = gcm(dirmeta_key, 1); details_enc = gcm(details_key, 1);
    if (!(siv = EVP_CIPHER_fetch(NULL, "AES-256-SIV", NULL))) die("AES-256-SIV");
    snprintf(spare, sizeof spare, "%s/audit.jsonl", argv[1]);
    if ((audit_fd = open(spare, O_WRONLY | O_APPEND | O_CREAT, 0600)) < 0) die("audit");
    unsigned char data[PAYLOAD];
    getrandom(data, sizeof data, 0);
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < n; i++) {  /* the spare inodes an earlier round's unlinks would leave */
            snprintf(spare, sizeof spare, "%s/r%d-%d", spares, r, i);
            int fd = open(spare, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0) die("spare");
            close(fd);
        }
        sync();
        double t0 = now();
        for (int i = 0; i < n; i++) {
            snprintf(spare, sizeof spare, "%s/r%d-%d", spares, r, i);
            snprintf(name, sizeof name, "r%df%d", r, i);
            create_one(sess, spare, name, data);
        }
        double t1 = now();
        for (int i = 0; i < n; i++) {
            snprintf(name, sizeof name, "r%df%d", r, i);
            read_one(sess, name, data);
        }
        double t2 = now(), cold = -1;
        if (drop_caches()) {
            double t3 = now();
            for (int i = 0; i < n; i++) {
                snprintf(name, sizeof name, "r%df%d", r, i);
                read_one(sess, name, data);
            }
            cold = (now() - t3) / n * 1e6;
        }
        printf("round %d: create %.1f us, read %.1f us", r, (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6);
        if (cold >= 0) printf(", cold read %.1f us", cold);
        printf(" per file (%d files)\n", n);
        fflush(stdout);
    }
    return 0;
}
