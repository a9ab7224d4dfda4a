#!/bin/sh
# One-shot, in the minio/mc image: the output bucket, and the pipeline's own S3 user
# with a policy limited to that bucket (and a read-only one for consumers, if set), so
# the MinIO root credentials are used only here. Safe to run again.
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${S3_BUCKET:?}" "${S3_ACCESS_KEY_ID:?}" "${S3_SECRET_ACCESS_KEY:?}"
policies=/etc/nightly-etl/minio

attach() {  # attach POLICY USER; mc refuses to attach a policy a second time
  if ! mc admin user info local "$2" | grep -q "$1"; then
    mc admin policy attach local "$1" --user "$2"
  fi
}

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$S3_BUCKET"

mc admin policy create local etl-readwrite "$policies/etl-readwrite.json"
mc admin user add local "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY"
attach etl-readwrite "$S3_ACCESS_KEY_ID"

if [ -n "${S3_READER_ACCESS_KEY_ID:-}" ]; then
  : "${S3_READER_SECRET_ACCESS_KEY:?set S3_READER_SECRET_ACCESS_KEY too}"
  mc admin policy create local etl-readonly "$policies/etl-readonly.json"
  mc admin user add local "$S3_READER_ACCESS_KEY_ID" "$S3_READER_SECRET_ACCESS_KEY"
  attach etl-readonly "$S3_READER_ACCESS_KEY_ID"
fi
echo "bucket $S3_BUCKET ready"
