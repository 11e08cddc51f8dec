/*
 * Copyright (c) 2013 Damien Miller <djm@mindrot.org>
 *
 * Adapted by Will Cosgrove <will@panic.com> for libssh2
 *
 * Permission to use, copy, modify, and distribute this software for any
 * purpose with or without fee is hereby granted, provided that the above
 * copyright notice and this permission notice appear in all copies.
 *
 * THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
 * WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF
 * MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR
 * ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES
 * WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN
 * ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF
 * OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.
 *
 * SPDX-License-Identifier: BSD-2-Clause
 */

/* $OpenBSD: cipher-chachapoly.c,v 1.8 2016/08/03 05:41:57 djm Exp $ */

#include "libssh2_priv.h"
#include "cipher-chachapoly.h"

static int chachapoly_timingsafe_bcmp(const void *b1, const void *b2, size_t n)
{
    const unsigned char *p1 = b1, *p2 = b2;
    int ret = 0;

    for(; n > 0; n--)
        ret |= *p1++ ^ *p2++;
    return ret != 0;
}

#ifdef CHACHAPOLY_LIBCRYPTO
/* maestro-relay patch: the libcrypto half. OpenSSL's ChaCha20 takes a 16-byte
   IV: a 32-bit little-endian block counter, then a 96-bit nonce. OpenSSH's
   construction keeps a 64-bit counter and puts the 64-bit big-endian sequence
   number in state words 14-15, so counter (LE32) || 0 (32 bits) || seqnr (BE64)
   gives the same key stream; packets never reach 2^32 blocks. */
static void chachapoly_evp_free(struct chachapoly_ctx *ctx)
{
    EVP_CIPHER_CTX_free(ctx->main_evp);
    EVP_CIPHER_CTX_free(ctx->header_evp);
    EVP_MAC_CTX_free(ctx->poly_mac);
    ctx->main_evp = NULL;
    ctx->header_evp = NULL;
    ctx->poly_mac = NULL;
}

static void chachapoly_evp_init(struct chachapoly_ctx *ctx,
                                const unsigned char *key)
{
    EVP_MAC *mac;

    /* a failed probe leaves no errors queued for later OpenSSL users */
    ERR_set_mark();
    ctx->main_evp = EVP_CIPHER_CTX_new();
    ctx->header_evp = EVP_CIPHER_CTX_new();
    mac = EVP_MAC_fetch(NULL, "POLY1305", NULL);
    ctx->poly_mac = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); /* the context holds its own reference */
    if(!ctx->main_evp || !ctx->header_evp || !ctx->poly_mac ||
       EVP_CipherInit(ctx->main_evp, EVP_chacha20(), key, NULL, 1) != 1 ||
       EVP_CipherInit(ctx->header_evp, EVP_chacha20(), key + 32, NULL,
                      1) != 1)
        chachapoly_evp_free(ctx);
    ERR_pop_to_mark();
}

/* ChaCha20 of 'len' bytes from block 'counter' of the stream for 'seqbuf';
   encryption and decryption are the same XOR. */
static int chachapoly_evp_stream(EVP_CIPHER_CTX *evp,
                                 const unsigned char seqbuf[8],
                                 unsigned char counter, unsigned char *dest,
                                 const unsigned char *src, size_t len)
{
    unsigned char iv[16];
    int outl = 0;
    int rc;

    memset(iv, 0, sizeof(iv));
    iv[0] = counter;
    memcpy(iv + 8, seqbuf, 8);
    rc = len <= INT_MAX &&
         EVP_CipherInit(evp, NULL, NULL, iv, 1) == 1 &&
         EVP_CipherUpdate(evp, dest, &outl, src, (int)len) == 1 &&
         outl == (int)len;
    ssh2_explicit_zero(iv, sizeof(iv));
    return rc ? 0 : -1;
}

static int chachapoly_evp_tag(EVP_MAC_CTX *mac, unsigned char *tag,
                              const unsigned char *data, size_t len,
                              const unsigned char *poly_key)
{
    size_t taglen = 0;

    if(EVP_MAC_init(mac, poly_key, POLY1305_KEYLEN, NULL) != 1 ||
       EVP_MAC_update(mac, data, len) != 1 ||
       EVP_MAC_final(mac, tag, &taglen, POLY1305_TAGLEN) != 1 ||
       taglen != POLY1305_TAGLEN)
        return -1;
    return 0;
}
#endif /* CHACHAPOLY_LIBCRYPTO */

int chachapoly_init(struct chachapoly_ctx *ctx, const unsigned char *key,
                    size_t keylen)
{
#ifdef CHACHAPOLY_LIBCRYPTO
    /* chachapoly_free() is safe on whatever this returns */
    ctx->main_evp = NULL;
    ctx->header_evp = NULL;
    ctx->poly_mac = NULL;
#endif
    if(keylen != (32 + 32)) /* 2 x 256-bit keys */
        return LIBSSH2_ERROR_INVAL;
    chacha_keysetup(&ctx->main_ctx, key, 256);
    chacha_keysetup(&ctx->header_ctx, key + 32, 256);
#ifdef CHACHAPOLY_LIBCRYPTO
    chachapoly_evp_init(ctx, key);
#endif
    return 0;
}

void chachapoly_free(struct chachapoly_ctx *ctx)
{
#ifdef CHACHAPOLY_LIBCRYPTO
    chachapoly_evp_free(ctx);
#endif
    ssh2_explicit_zero(ctx, sizeof(*ctx));
}

LIBSSH2_API int libssh2_chachapoly_uses_libcrypto(void)
{
    struct chachapoly_ctx ctx;
    unsigned char key[32 + 32];
    int uses = 0;

    memset(key, 0, sizeof(key));
    if(chachapoly_init(&ctx, key, sizeof(key)) == 0) {
#ifdef CHACHAPOLY_LIBCRYPTO
        uses = ctx.main_evp != NULL;
#endif
    }
    chachapoly_free(&ctx);
    return uses;
}

/*
 * chachapoly_crypt() operates as following:
 * En/decrypt with header key 'aadlen' bytes from 'src', storing result
 * to 'dest'. The ciphertext here is treated as additional authenticated
 * data for MAC calculation.
 * En/decrypt 'len' bytes at offset 'aadlen' from 'src' to 'dest'. Use
 * POLY1305_TAGLEN bytes at offset 'len'+'aadlen' as the authentication
 * tag. This tag is written on encryption and verified on decryption.
 */
#ifdef CHACHAPOLY_LIBCRYPTO
/* chachapoly_crypt() on libcrypto, step for step as the portable code below:
   the tag is checked before anything is decrypted. */
static int chachapoly_crypt_evp(struct chachapoly_ctx *ctx,
                                const unsigned char seqbuf[8],
                                unsigned char *dest, const unsigned char *src,
                                size_t len, size_t aadlen, int do_encrypt)
{
    unsigned char expected_tag[POLY1305_TAGLEN], poly_key[POLY1305_KEYLEN];
    int r = LIBSSH2_ERROR_DECRYPT;  /* fail */

    memset(poly_key, 0, sizeof(poly_key));
    if(chachapoly_evp_stream(ctx->main_evp, seqbuf, 0, poly_key, poly_key,
                             sizeof(poly_key)))
        goto out;

    if(!do_encrypt) {
        const unsigned char *tag = src + aadlen + len;

        if(chachapoly_evp_tag(ctx->poly_mac, expected_tag, src, aadlen + len,
                              poly_key) ||
           chachapoly_timingsafe_bcmp(expected_tag, tag, POLY1305_TAGLEN))
            goto out;
    }

    if(aadlen && chachapoly_evp_stream(ctx->header_evp, seqbuf, 0, dest, src,
                                       aadlen))
        goto out;

    if(chachapoly_evp_stream(ctx->main_evp, seqbuf, 1, dest + aadlen,
                             src + aadlen, len))
        goto out;

    if(do_encrypt &&
       chachapoly_evp_tag(ctx->poly_mac, dest + aadlen + len, dest,
                          aadlen + len, poly_key))
        goto out;

    r = LIBSSH2_ERROR_NONE;
out:
    ssh2_explicit_zero(expected_tag, sizeof(expected_tag));
    ssh2_explicit_zero(poly_key, sizeof(poly_key));
    return r;
}
#endif /* CHACHAPOLY_LIBCRYPTO */

int chachapoly_crypt(struct chachapoly_ctx *ctx, libssh2_uint64_t seqnr,
                     unsigned char *dest, const unsigned char *src, size_t len,
                     size_t aadlen, int do_encrypt)
{
    static const unsigned char one[8] = {
        1, 0, 0, 0, 0, 0, 0, 0  /* NB little-endian */
    };
    unsigned char seqbuf[8];
    unsigned char expected_tag[POLY1305_TAGLEN], poly_key[POLY1305_KEYLEN];
    int r = LIBSSH2_ERROR_DECRYPT;  /* fail */
    unsigned char *ptr = NULL;

    /*
     * Run ChaCha20 once to generate the Poly1305 key. The IV is the
     * packet sequence number.
     */
    memset(poly_key, 0, sizeof(poly_key));
    ptr = &seqbuf[0];
    ssh2_store_u64(&ptr, seqnr);
#ifdef CHACHAPOLY_LIBCRYPTO
    if(ctx->main_evp) {
        r = chachapoly_crypt_evp(ctx, seqbuf, dest, src, len, aadlen,
                                 do_encrypt);
        goto out;
    }
#endif
    chacha_ivsetup(&ctx->main_ctx, seqbuf, NULL);
    chacha_encrypt_bytes(&ctx->main_ctx, poly_key, poly_key, sizeof(poly_key));

    /* If decrypting, check tag before anything else */
    if(!do_encrypt) {
        const unsigned char *tag = src + aadlen + len;

        poly1305_auth(expected_tag, src, aadlen + len, poly_key);
        if(chachapoly_timingsafe_bcmp(expected_tag, tag, POLY1305_TAGLEN))
            goto out;
    }

    /* Crypt additional data */
    if(aadlen) {
        chacha_ivsetup(&ctx->header_ctx, seqbuf, NULL);
        chacha_encrypt_bytes(&ctx->header_ctx, src, dest, aadlen);
    }

    /* Set Chacha's block counter to 1 */
    chacha_ivsetup(&ctx->main_ctx, seqbuf, one);
    chacha_encrypt_bytes(&ctx->main_ctx, src + aadlen, dest + aadlen, len);

    /* If encrypting, calculate and append tag */
    if(do_encrypt)
        poly1305_auth(dest + aadlen + len, dest, aadlen + len, poly_key);

    r = LIBSSH2_ERROR_NONE;
out:
    ssh2_explicit_zero(expected_tag, sizeof(expected_tag));
    ssh2_explicit_zero(seqbuf, sizeof(seqbuf));
    ssh2_explicit_zero(poly_key, sizeof(poly_key));
    return r;
}

/* Decrypt and extract the encrypted packet length */
int chachapoly_get_length(struct chachapoly_ctx *ctx, unsigned int *plenp,
                          libssh2_uint64_t seqnr, const unsigned char *cp,
                          size_t len)
{
    unsigned char buf[4], seqbuf[8];
    unsigned char *ptr = NULL;

    if(len < 4)
        return -1;  /* fail */
    ptr = &seqbuf[0];
    ssh2_store_u64(&ptr, seqnr);
#ifdef CHACHAPOLY_LIBCRYPTO
    if(ctx->header_evp) {
        if(chachapoly_evp_stream(ctx->header_evp, seqbuf, 0, buf, cp, 4))
            return -1;  /* fail */
    }
    else
#endif
    {
        chacha_ivsetup(&ctx->header_ctx, seqbuf, NULL);
        chacha_encrypt_bytes(&ctx->header_ctx, cp, buf, 4);
    }
    *plenp = ssh2_ntohu32(buf);
    return 0;  /* success */
}
