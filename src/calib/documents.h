/* documents.h: text documents from the files users give moeq (calibration
 * and evaluation): plain text (the whole file is one document), JSONL with a
 * "text" field, or JSONL chat transcripts with "messages" [{role, content}],
 * or a directory of such files (*.txt, *.jsonl; sorted by name). */
#ifndef MOEQ_CALIB_DOCUMENTS_H
#define MOEQ_CALIB_DOCUMENTS_H

#include "moeq/moeq.h"

#include <stddef.h>

typedef struct moeq_document {
    char *text;
    size_t bytes;
    char *lang;   /* the JSONL "lang" field or NULL */
    char *domain; /* the JSONL "domain" field or NULL */
} moeq_document;

typedef struct moeq_documents {
    moeq_document *docs;
    size_t count;
    size_t capacity;
} moeq_documents;

/* Appends the documents of path (file or directory) to docs. When
 * lang_filter is not NULL ("en" or a list "de,fr,it"), only JSONL documents
 * whose "lang" is one of its codes. */
moeq_code moeq_documents_load(const char *path, const char *lang_filter, moeq_documents *docs,
                              moeq_error *err);
void moeq_documents_free(moeq_documents *docs);

#endif
