/** @type {AppTypes.Config} */
// OHIF 3.13 configuration for cxr: Orthanc's DICOMweb at the same origin.
//
// orthanc/viewer/launch.py serves this file as /app-config.js (in place of the one in
// @ohif/app's dist/) and reverse-proxies /dicom-web and /wado to Orthanc, so every request
// stays on one origin: no CORS, and the browser's basic-auth credentials (asked for once,
// when the page is opened, and checked by Orthanc) go with every DICOMweb request.
window.config = {
  name: 'cxr/orthanc',
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  // Same origin: nothing cross-origin to warn about. The CPU-fallback notice would cover the
  // viewport in a browser without GPU (headless Chromium in the tests).
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  maxNumRequests: {
    interaction: 100,
    thumbnail: 5,
    prefetch: 10,
  },
  showErrorDetails: 'always',
  // The "for investigational use only" banner (set option: 'always' to show it again).
  investigationalUseDialog: {
    option: 'never',
  },
  customizationService: {
    // No onboarding tour over the viewer.
    'ohif.tours': { $set: [] },
  },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (cxr)',
        name: 'orthanc',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        wadoUriRoot: '/wado',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        omitQuotationForMultipartRequest: true,
        bulkDataURI: {
          enabled: true,
          relativeResolution: 'studies',
        },
      },
    },
  ],
};
