// libopendkim decodes a signature's public key from DER with d2i_PUBKEY_bio() for every
// signature it verifies. With OpenSSL 3.0 that call builds a decoder context each time, and
// costs far more than the RSA verification itself. This definition takes the place of
// OpenSSL's for the process (the executable's definition comes first in symbol lookup): it
// keeps decoded keys by their DER bytes and hands out another reference to a key it has
// seen, and asks OpenSSL's own function for anything else.

#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "CDKIMKeyCache.h"

typedef EVP_PKEY *(*d2i_pubkey_bio_fn)(BIO *, EVP_PKEY **);

enum { capacity = 256, largest_key = 8192 };

struct entry {
    unsigned char *der;
    long length;
    EVP_PKEY *key;
};

static struct entry entries[capacity];
static int count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static d2i_pubkey_bio_fn openssl_d2i;
static atomic_size_t hits, misses;

static void find_openssl(void) {
    openssl_d2i = (d2i_pubkey_bio_fn)dlvsym(RTLD_NEXT, "d2i_PUBKEY_bio", "OPENSSL_3.0.0");
    if (openssl_d2i == NULL) openssl_d2i = (d2i_pubkey_bio_fn)dlsym(RTLD_NEXT, "d2i_PUBKEY_bio");
}

size_t sluice_dkim_key_cache_hits(void) { return atomic_load(&hits); }
size_t sluice_dkim_key_cache_misses(void) { return atomic_load(&misses); }

EVP_PKEY *d2i_PUBKEY_bio(BIO *bio, EVP_PKEY **out) {
    pthread_once(&once, find_openssl);
    if (openssl_d2i == NULL) return NULL;
    char *data = NULL;
    long length = (bio != NULL && out == NULL && BIO_method_type(bio) == BIO_TYPE_MEM) ? BIO_get_mem_data(bio, &data) : 0;
    if (length <= 0 || length > largest_key || data == NULL) return openssl_d2i(bio, out);

    pthread_mutex_lock(&lock);
    for (int i = 0; i < count; i++) {
        if (entries[i].length == length && memcmp(entries[i].der, data, (size_t)length) == 0
            && EVP_PKEY_up_ref(entries[i].key) == 1) {
            EVP_PKEY *key = entries[i].key;
            pthread_mutex_unlock(&lock);
            atomic_fetch_add(&hits, 1);
            return key;
        }
    }
    pthread_mutex_unlock(&lock);

    unsigned char *der = malloc((size_t)length);
    if (der == NULL) return openssl_d2i(bio, out);
    memcpy(der, data, (size_t)length);
    EVP_PKEY *key = openssl_d2i(bio, NULL);
    if (key == NULL || EVP_PKEY_up_ref(key) != 1) {
        free(der);
        return key;
    }
    atomic_fetch_add(&misses, 1);
    pthread_mutex_lock(&lock);
    if (count == capacity) {  // full: start again rather than track use
        for (int i = 0; i < count; i++) {
            EVP_PKEY_free(entries[i].key);
            free(entries[i].der);
        }
        count = 0;
    }
    entries[count++] = (struct entry){ .der = der, .length = length, .key = key };
    pthread_mutex_unlock(&lock);
    return key;
}
