// The Flex Consumption (FC1) Linux function app, Python 3.11, deployed by azd from a blob container and
// running as the user-assigned runtime identity. Every connection is identity-based: the app settings
// below carry names, URLs and the identity's client id, never a key or a secret.
//
// Flex Consumption refuses site properties and app settings of the older plans (tests/test_infra.py holds
// the list: ftpsState, alwaysOn, linuxFxVersion, FUNCTIONS_WORKER_RUNTIME, WEBSITE_RUN_FROM_PACKAGE, ...):
// runtime, scale and deployment live in functionAppConfig; FTP is off through the publishing-credentials
// policies below.
param name string
param planName string
param location string
param tags object

@description('azd service name (azure.yaml); azd finds the app by its azd-service-name tag.')
param serviceName string = 'api'

@description('Runtime identity: the code, the host storage and telemetry.')
param identityId string
param identityClientId string
@description('Deployment identity: reads and writes the package container, nothing else.')
param deployIdentityId string
param storageAccountName string
@description('URL of the blob container that holds the deployment package (package-storage.bicep).')
param packageContainerUrl string
@description('Subnet the app joins (private networking), delegated to Microsoft.App/environments. Empty: none.')
param virtualNetworkSubnetId string = ''
param appInsightsName string
param keyVaultUrl string
@description('Envelope mode: the Key Vault key that wraps the data keys (keyvault.bicep).')
param dataKeyName string = 'mc-data-key'
param customPublicUrl string = ''
param redirectAllowlist string = ''
param tablePrefix string = ''
param linkTtlSeconds int
param linkMaxTtlSeconds int
param flowTtlSeconds int
@allowed([
  'on'
  'strict'
  'off'
])
param accessCheck string = 'on'
@allowed([
  'keyvault'
  'envelope'
])
param tokenStorageMode string = 'keyvault'
param webhookUrls string = ''
param reauthRedirectUrl string = ''
param keepaliveDays int = 30
param keepaliveMaxPerRun int = 50
param maximumInstanceCount int = 100
param instanceMemoryMB int = 2048

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': serviceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
      '${deployIdentityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: packageContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: deployIdentityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

var publicUrl = empty(customPublicUrl) ? 'https://${site.properties.defaultHostName}' : customPublicUrl

// Flex Consumption sets the runtime from functionAppConfig, so FUNCTIONS_WORKER_RUNTIME,
// FUNCTIONS_EXTENSION_VERSION and WEBSITE_RUN_FROM_PACKAGE must not be set (the platform rejects them).
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: {
    // The Functions host's storage, identity-based (no AzureWebJobsStorage connection string). Service
    // URIs from the account itself rather than __accountName, which assumes public Azure's host names.
    AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
    AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
    AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    // Telemetry: the connection string only names the App Insights resource (it is not a credential
    // and, with local auth disabled, cannot ingest on its own); ingestion uses the identity's token.
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
    // The service's settings (shared/settings.py).
    AZURE_CLIENT_ID: identityClientId
    MC_PUBLIC_URL: publicUrl
    MC_TABLES_ENDPOINT: storage.properties.primaryEndpoints.table
    MC_TABLE_PREFIX: tablePrefix
    MC_KEY_VAULT_URL: keyVaultUrl
    // Envelope mode's key-encryption key in that vault (wrapKey/unwrapKey only; the app may use no other key).
    MC_DATA_KEY_NAME: dataKeyName
    MC_REDIRECT_ALLOWLIST: redirectAllowlist
    MC_LINK_TTL_SECONDS: string(linkTtlSeconds)
    MC_LINK_MAX_TTL_SECONDS: string(linkMaxTtlSeconds)
    MC_FLOW_TTL_SECONDS: string(flowTtlSeconds)
    MC_ACCESS_CHECK: accessCheck
    MC_SECRET_MODE: tokenStorageMode
    // Webhooks: configured targets (their signing key is Key Vault secret mc-webhook-secret; targets
    // registered through /v1/webhooks keep their own key there) and the re-authentication redirect.
    MC_WEBHOOK_URLS: webhookUrls
    MC_REAUTH_REDIRECT_URL: reauthRedirectUrl
    // Credential keep-alive (timer function credential_keepalive, hourly).
    MC_KEEPALIVE_DAYS: string(keepaliveDays)
    MC_KEEPALIVE_MAX_PER_RUN: string(keepaliveMaxPerRun)
    // Logs (shared/web/logs.py): one line per request; the Azure SDK, MSAL and urllib3 only from WARNING.
    MC_LOG_LEVEL: 'INFO'
    MC_SDK_LOG_LEVEL: 'WARNING'
    // API tokens and OAuth apps are cached per instance this long: a revocation is effective everywhere
    // within it (0: no cache).
    MC_AUTH_CACHE_SECONDS: '5'
    // GET /v1/accounts's total: count rows kept per instance this many seconds (shared/storage/tables/counts.py).
    MC_COUNT_CACHE_SECONDS: '5'
  }
}

// Basic-auth publishing (FTP and the SCM site's user/password) is off: azd deploys with an Entra token.
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output publicUrl string = publicUrl
