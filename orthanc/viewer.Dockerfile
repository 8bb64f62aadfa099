# The viewer: OHIF (npm @ohif/app dist, pinned by orthanc/viewer/package-lock.json) behind
# Debian's nginx, with /dicom-web proxied to Orthanc.
FROM node:20-bookworm-slim AS ohif
WORKDIR /opt/cxr/orthanc/viewer
COPY orthanc/viewer/package.json orthanc/viewer/package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light python3 \
 && rm -rf /var/lib/apt/lists/*
COPY orthanc/viewer /opt/cxr/orthanc/viewer
COPY --from=ohif /opt/cxr/orthanc/viewer/node_modules /opt/cxr/orthanc/viewer/node_modules
RUN useradd --system --home /var/lib/cxr-viewer --create-home cxr-viewer
USER cxr-viewer
EXPOSE 3000
ENTRYPOINT ["python3", "/opt/cxr/orthanc/viewer/launch.py", "--workdir", "/var/lib/cxr-viewer", "--port", "3000"]
CMD ["--orthanc-url", "http://orthanc:8042"]
